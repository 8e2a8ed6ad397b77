"""retinaface_ext: RetinaFace face detection for PyTorch with C++/CUDA kernels."""

from . import nn, ops
from ._extension import compiled_backends, is_available as kernels_available

__version__ = "0.1.0"

__all__ = ["nn", "ops", "compiled_backends", "kernels_available", "__version__"]
