"""The kernel ops (``torch.ops.retinaface_ext.*``) with their Python faces.

Each op has a pure-PyTorch twin of the same signature in ``retinaface_ext.ops.reference``.
"""

from . import reference
from .nms import batched_nms, nms

__all__ = ["nms", "batched_nms", "reference"]
