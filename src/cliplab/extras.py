"""Optional dependencies: which ``pip install 'cliplab[EXTRA]'`` provides a package, as one-line hints."""

from __future__ import annotations

import importlib.util

from cliplab.errors import CliplabError

__all__ = ["install_hint", "require"]

# import name → the extra in pyproject.toml that installs it
EXTRA_OF = {
    "sklearn": "eval", "matplotlib": "eval",
    "webdataset": "train", "braceexpand": "train", "tensorboard": "train",
    "pyarrow": "index", "faiss": "index",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "onnx": "export", "onnxruntime": "export",
    "transformers": "hf",
}


def install_hint(err: ModuleNotFoundError) -> str | None:
    """``"needs the X package: pip install 'cliplab[E]'"`` for a missing optional package, else None."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    return None if extra is None else f"needs the {top} package: pip install 'cliplab[{extra}]'"


def require(*modules: str, what: str) -> None:
    """Fail at once, in one line, when ``what`` will need an optional package that is not installed."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules without a spec (None: blocked)
            found = False
        if not found:
            raise CliplabError(f"{what} {install_hint(ModuleNotFoundError(name=name))}")
