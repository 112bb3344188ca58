"""The `.arch` language front end: grammar, parser, AST and the resolution of imports and extends."""

from .ast import Model
from .errors import ArchError, ArchErrors, SourceMap, Span
from .parser import parse_source
from .resolve import load_models

__all__ = ["ArchError", "ArchErrors", "Model", "SourceMap", "Span", "load_models", "parse_source"]
