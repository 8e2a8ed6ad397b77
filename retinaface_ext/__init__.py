"""retinaface_ext: RetinaFace face detection for PyTorch with C++/CUDA kernels."""

from . import data, nn, ops
from ._extension import compiled_backends
from ._extension import is_available as kernels_available
from ._version import __version__
from .draw import draw_detections
from .inference import Detections, Detector
from .models import RetinaFace

__all__ = [
    "Detector",
    "Detections",
    "RetinaFace",
    "draw_detections",
    "data",
    "nn",
    "ops",
    "compiled_backends",
    "kernels_available",
    "__version__",
]
