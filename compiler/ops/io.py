"""The model's arguments and results."""

from __future__ import annotations

from .base import Cost, OpDef, RegistryError, attr, register


@register
class Input(OpDef):
    name = "input"
    summary = "token ids, an argument of forward()"
    attrs = {"role": attr(str, doc="tokens | encoder_tokens")}
    arity = (0, 0)
    role = "input"
    picture = "io"

    def params(self, a, shape):
        return {}

    def category(self, d):
        return "other"

    def cost(self, d, ctx):
        return Cost()

    def module(self, d, emit):
        return None

    def call(self, d, args, emit):
        raise RegistryError("an input is an argument of forward(), never computed")


@register
class Output(OpDef):
    name = "output"
    summary = "a result of the model"
    attrs = {"role": attr(str, doc="logits | hidden | pooled")}
    arity = (1, 1)
    role = "output"
    picture = "io"

    def params(self, a, shape):
        return {}

    def category(self, d):
        return "other"

    def cost(self, d, ctx):
        return Cost()

    def module(self, d, emit):
        return None

    def call(self, d, args, emit):
        raise RegistryError("an output is returned, never computed")
