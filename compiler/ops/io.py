"""The model's arguments and results."""

from __future__ import annotations

from .base import RegistryError, WeightlessOp, attr, register


class _Boundary(WeightlessOp):
    abstract = True
    arity = (0, 0)
    picture = "io"

    def call(self, d, args, emit):
        raise RegistryError(f"{self.name} is a {self.role} of forward(), never computed")


@register
class Input(_Boundary):
    name = "input"
    summary = "token ids, an argument of forward()"
    attrs = {"role": attr(str, doc="tokens | encoder_tokens")}
    role = "input"


@register
class Output(_Boundary):
    name = "output"
    summary = "a result of the model"
    attrs = {"role": attr(str, doc="logits | hidden | pooled")}
    arity = (1, 1)
    role = "output"
