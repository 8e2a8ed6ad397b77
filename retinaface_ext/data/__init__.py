"""Training data: annotation files, the WIDER FACE dataset, the built-in synthetic face
set, the reference augmentation and batching for :func:`retinaface_ext.ops.match`."""

from .dataset import WiderFaceDataset
from .labels import Annotations, LabelFileError, read_annotations
from .loader import Batch, FaceLoader, collate, make_loader
from .transforms import TrainTransform

__all__ = [
    "Annotations",
    "Batch",
    "FaceLoader",
    "LabelFileError",
    "TrainTransform",
    "WiderFaceDataset",
    "collate",
    "make_loader",
    "read_annotations",
]
