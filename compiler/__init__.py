"""The compiler: AST → graph IR → validation and facts → optimization passes → Python source."""

from .codegen import generate
from .facts import Facts, compute_facts
from .ir import dump
from .lower import lower
from .passes import DEFAULT_PIPELINE, run_pipeline
from .validate import validate

__all__ = ["DEFAULT_PIPELINE", "Facts", "compute_facts", "dump", "generate", "lower", "run_pipeline", "validate"]
