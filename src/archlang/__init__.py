"""archlang: a declarative architecture language for neural networks, and its compiler `archc`."""

__version__ = "0.1.0"
