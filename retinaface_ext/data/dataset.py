"""WIDER FACE (or any face set in its label layout) as a torch Dataset."""

import os
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..images import read_image
from .labels import Annotations, read_annotations

_MISSING_SHOWN = 20


class WiderFaceDataset(torch.utils.data.Dataset):
    """Images and their faces from a RetinaFace ``label.txt`` or a WIDER FACE
    ``wider_face_*_bbx_gt.txt`` (see :mod:`retinaface_ext.data.labels`).

    An item is ``(image, target)``: the BGR image as OpenCV reads it (``[H, W, 3]``
    uint8) and its faces ``[G, 15]`` float32 (x1, y1, x2, y2, ten landmark coordinates,
    label 1 or -1), or whatever ``transform(image, target)`` returns. Images without
    faces are items too (negatives). Only the annotations are held in memory; pixels are
    read when an item is.

    Args:
        label_file: the annotation file.
        images_dir: the folder the image paths are relative to; by default the
            ``images/`` folder beside the label file, as Pytorch_Retinaface lays it out.
        transform: e.g. :class:`retinaface_ext.data.transforms.TrainTransform`.
    """

    def __init__(self, label_file, images_dir=None, transform: Optional[Callable] = None):
        self.label_file = os.fspath(label_file)
        self.annotations: Annotations = read_annotations(self.label_file)
        if images_dir is None:
            images_dir = os.path.join(os.path.dirname(os.path.abspath(self.label_file)), "images")
        self.images_dir = os.path.abspath(os.fspath(images_dir))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.annotations)

    def __repr__(self) -> str:
        return (
            f"WiderFaceDataset({self.label_file!r}: {len(self)} images, {self.num_faces} faces, "
            f"format {self.annotations.format}, images in {self.images_dir!r})"
        )

    @property
    def num_faces(self) -> int:
        return len(self.annotations.targets)

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.annotations.names[self._index(index)])

    def target(self, index: int) -> np.ndarray:
        """The faces of image ``index``: a ``[G, 15]`` float32 copy."""
        return self.annotations.faces(self._index(index)).copy()

    def __getitem__(self, index: int) -> Tuple:
        image = read_image(self.image_path(index))
        target = self.target(index)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def missing_images(self) -> List[str]:
        """The full path of every image that is not a file."""
        return [path for path in map(self.image_path, range(len(self))) if not os.path.isfile(path)]

    def check(self) -> None:
        """Raises FileNotFoundError listing every missing image at once."""
        missing = self.missing_images()
        if missing:
            shown = "\n  ".join(missing[:_MISSING_SHOWN])
            more = (
                f"\n  ... and {len(missing) - _MISSING_SHOWN} more (missing_images() lists them all)"
                if len(missing) > _MISSING_SHOWN
                else ""
            )
            raise FileNotFoundError(
                f"{len(missing)} of the {len(self)} images of {self.label_file} are missing "
                f"(images folder {self.images_dir}):\n  {shown}{more}"
            )

    def reseed(self, seed: int) -> None:
        """Reseeds the transform's random draws (called per worker and per epoch by
        :func:`retinaface_ext.data.make_loader`'s loaders)."""
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def _index(self, index: int) -> int:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} is out of range for {len(self)} images")
        return index % len(self)
