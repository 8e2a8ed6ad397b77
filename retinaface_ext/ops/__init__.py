"""The kernel ops (``torch.ops.retinaface_ext.*``) with their Python faces.

Each op has a pure-PyTorch twin of the same signature in ``retinaface_ext.ops.reference``.
"""

from . import reference
from .box_coder import decode, decode_detections, decode_landm, encode, encode_landm
from .box_vote import box_vote
from .deform_conv import deform_conv2d
from .detect_faces import detect_faces
from .image import image_planes
from .match import box_iou, match
from .nms import batched_nms, nms

__all__ = [
    "nms",
    "batched_nms",
    "box_iou",
    "box_vote",
    "match",
    "encode",
    "decode",
    "encode_landm",
    "decode_landm",
    "decode_detections",
    "detect_faces",
    "deform_conv2d",
    "image_planes",
    "reference",
]
