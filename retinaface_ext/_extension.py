"""Loads the compiled kernels (``retinaface_ext._C``) without ever crashing the interpreter.

``_C`` is only loaded when ``_build_info.py`` beside it says it was built for the torch
that is running: an extension built against another torch (pip's isolated build can do
that) may fail with undefined symbols or, worse, crash. When loading is not possible the
package still imports and the pure-PyTorch references work; calling a kernel op raises
an ImportError that says what happened and the command that fixes it.
"""

import importlib
from pathlib import Path

import torch

REBUILD_COMMAND = "pip install --no-build-isolation --no-deps --force-reinstall ."

_load_error = None
_build_info = None


def _reason_not_loadable():
    """Why _C cannot be loaded, or None when it can."""
    global _build_info
    package_dir = Path(__file__).parent
    if not any(package_dir.glob("_C.*")):
        return "the compiled extension retinaface_ext._C is missing (the package was not built)"
    try:
        _build_info = importlib.import_module(f"{__package__}._build_info")
    except ImportError:
        return "retinaface_ext/_build_info.py is missing, so the torch that _C was built for is unknown"
    if _build_info.TORCH_VERSION != torch.__version__:
        return (
            f"retinaface_ext._C was built for torch {_build_info.TORCH_VERSION}, "
            f"but torch {torch.__version__} is running"
        )
    return None


def _load():
    global _load_error
    reason = _reason_not_loadable()
    if reason is None:
        try:
            importlib.import_module(f"{__package__}._C")
            return
        except ImportError as error:
            reason = f"importing retinaface_ext._C failed: {error}"
    _load_error = ImportError(
        f"retinaface_ext kernels are unavailable: {reason}. "
        f"Rebuild them for the running torch, from the source folder: {REBUILD_COMMAND} "
        "(the pure-PyTorch references in retinaface_ext.ops.reference work without them)."
    )


def is_available():
    """True when the compiled kernels are loaded."""
    return _load_error is None


def compiled_backends():
    """The backends _C was compiled with, e.g. ('cpu', 'cuda'); () when not loaded."""
    return tuple(_build_info.BACKENDS) if is_available() else ()


def require(tensor=None):
    """Raises the ImportError that explains why the kernels are unavailable, if they are,
    or a RuntimeError when ``tensor`` is on CUDA and _C was compiled without CUDA."""
    if _load_error is not None:
        raise _load_error
    if tensor is not None and getattr(tensor, "is_cuda", False) and "cuda" not in _build_info.BACKENDS:
        raise RuntimeError(
            "retinaface_ext was built without CUDA kernels (torch was not a CUDA build or nvcc "
            f"was missing at build time); rebuild with CUDA: {REBUILD_COMMAND}"
        )


_load()


def library_path() -> str:
    """The file of the compiled ops (``retinaface_ext/_C*.so``): what a C++ program loads
    before a .pt2 package that calls them (see examples/cpp)."""
    require()
    return importlib.import_module(f"{__package__}._C").__file__
