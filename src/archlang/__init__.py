"""archlang: a declarative architecture language for neural networks, and its compiler `archc`."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import archlang` stays cheap (no torch) until the API is used.
    if name in ("build", "compile_spec", "load_model", "check_file", "load_source"):
        from archlang import api

        return getattr(api, name)
    if name in ("from_hf", "load_hf_checkpoint", "save_hf_checkpoint"):
        from archlang.interop import hf

        return getattr(hf, name)
    if name in ("save", "load"):
        from archlang import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'archlang' has no attribute {name!r}")
