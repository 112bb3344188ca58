"""The IR's op definitions, one module per family of ops; importing this package registers them
all. `REGISTRY` maps each op name to its definition, in the order the modules declare them."""

from . import io, embeddings, positions, elementwise, norms, projections, attention, sparse, moe, ssm, mtp, routing, adapters  # noqa: F401  (registers)
from . import linear_mixers  # noqa: F401  (registers)
from . import conv  # noqa: F401  (registers)
from . import heads  # noqa: F401  (registers)
from . import xlstm  # noqa: F401  (registers)
from . import s4  # noqa: F401  (registers)
from . import rwkv  # noqa: F401  (registers)
from . import rglru  # noqa: F401  (registers)
from . import lightning  # noqa: F401  (registers)
from . import electra  # noqa: F401  (registers)
from . import zamba2  # noqa: F401  (registers)
from . import gau  # noqa: F401  (registers)
from . import disentangled  # noqa: F401  (registers)
from . import blt  # noqa: F401  (registers)
from .base import (
    CATEGORIES, PICTURE_GROUPS, REGISTRY, ActivationContext, Attr, Cost, Emit, FactsContext, OpDef, Refusal,
    RegistryError, Saved, VerifyContext, WeightlessOp,
    attr, attr_problems, complete_attrs, op_def, register,
)

__all__ = [
    "CATEGORIES", "PICTURE_GROUPS", "REGISTRY", "ActivationContext", "Attr", "Cost", "Emit", "FactsContext", "OpDef", "Refusal",
    "RegistryError", "Saved", "VerifyContext", "WeightlessOp", "attr", "attr_problems", "complete_attrs", "mixer_ops", "op_def",
    "register",
]


def mixer_ops() -> dict[str, OpDef]:
    """Spec mixer kind → the op definition that implements it."""
    return {kind: op for op in REGISTRY.values() for kind in op.mixer_kinds}
