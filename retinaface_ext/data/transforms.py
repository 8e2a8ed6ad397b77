"""The training augmentation of Pytorch_Retinaface (``data/data_augment.py``), with its
semantics, on OpenCV and numpy, repeatable under a seed.

``TrainTransform`` first draws every random choice for an image (:class:`Draws`: crop
square, photometric distortion, mirror, interpolation), then applies them; the geometric
part can be checked against the reference with the same draws.

Where we differ from the reference, on purpose:

- An image without faces passes through (the reference asserts): it gets a random crop,
  since there is no face to lose, and comes out as a negative with an empty target.
- Faces without landmarks (label -1) keep landmark values of -1 in the output (outside
  [0, 1], so never mistaken for points); the reference shifts, clips, mirrors and scales
  its -1 sentinels into plausible coordinates.
- The distortion uses lookup tables that give the reference's values exactly (its float
  arithmetic truncated to uint8); when neither saturation nor hue is drawn we skip the
  reference's BGR -> HSV -> BGR round trip, which changes nothing but rounding.
- Mirroring is applied after the resize (the same geometry, on fewer pixels).
- A crop is kept when it wholly contains a face of any size; the reference's IoF test
  floors a face's area at 1 px, so faces under 1 px^2 never count as contained.

Kept as the reference has them: the crop's last possible position is never drawn
(``randrange(width - side)``), and no face is too small to keep (the reference's comment
speaks of 16 px at training scale, its code keeps every face).
"""

from typing import NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

# The training mean, BGR (Pytorch_Retinaface calls it rgb_mean but uses it on BGR): the preset's.
from ..models.config import MEAN_BGR
from ..targets import BOX, LABEL, LANDMARKS, WIDTH

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIES = 250
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
#: The landmark value of faces labelled -1 (no landmarks) in transformed targets.
NO_LANDMARKS = -1.0
_SWAP_LEFT_RIGHT = [6, 7, 4, 5, 8, 9, 12, 13, 10, 11]  # columns 4..13 with eyes and mouth corners swapped


class Distortion(NamedTuple):
    """One draw of the photometric distortion; None means "not applied". With
    ``contrast_first`` the order is brightness, contrast, saturation, hue; otherwise
    brightness, saturation, hue, contrast (the reference's two orders)."""

    contrast_first: bool
    brightness: Optional[float] = None
    contrast: Optional[float] = None
    saturation: Optional[float] = None
    hue: Optional[int] = None


class Draws(NamedTuple):
    """Every random choice for one image. ``crop`` is (left, top, right, bottom) in
    pixels, or None when no crop was found (the image is then padded to a square)."""

    crop: Optional[Tuple[int, int, int, int]]
    distortion: Optional[Distortion]
    mirror: bool
    interpolation: int


def draw_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    boxes: np.ndarray,
    scales: Sequence[float] = CROP_SCALES,
    tries: int = CROP_TRIES,
):
    """A random square of side ``scale * min(height, width)`` that fully contains at
    least one of ``boxes`` ([G, 4] x1y1x2y2 pixels), tried up to ``tries`` times; None if
    none does. With no boxes, the first square drawn."""
    short_side = min(height, width)
    for _ in range(tries):
        side = max(1, int(scales[rng.integers(len(scales))] * short_side))
        left = 0 if width == side else int(rng.integers(width - side))
        top = 0 if height == side else int(rng.integers(height - side))
        right, bottom = left + side, top + side
        if len(boxes) == 0:
            return left, top, right, bottom
        inside = (boxes[:, 0] >= left) & (boxes[:, 1] >= top) & (boxes[:, 2] <= right) & (boxes[:, 3] <= bottom)
        if inside.any():
            return left, top, right, bottom
    return None


def crop_faces(image: np.ndarray, target: np.ndarray, crop: Tuple[int, int, int, int]):
    """The crop of ``image`` (a view) and the faces whose centres lie strictly inside it,
    boxes clipped to it and landmarks of labelled faces clamped to it, in its pixels."""
    left, top, right, bottom = crop
    centres = (target[:, 0:2] + target[:, 2:4]) / 2
    keep = (centres[:, 0] > left) & (centres[:, 0] < right) & (centres[:, 1] > top) & (centres[:, 1] < bottom)
    faces = target[keep].copy()
    origin = np.array([left, top], dtype=faces.dtype)
    side = np.array([right - left, bottom - top], dtype=faces.dtype)
    faces[:, 0:2] = np.maximum(faces[:, 0:2], origin) - origin
    faces[:, 2:4] = np.minimum(faces[:, 2:4], origin + side) - origin
    labelled = faces[:, LABEL] > 0
    points = faces[labelled, LANDMARKS].reshape(-1, 5, 2)
    faces[labelled, LANDMARKS] = np.clip(points - origin, 0, side).reshape(-1, 10)
    faces[~labelled, LANDMARKS] = NO_LANDMARKS
    return image[top:bottom, left:right], faces


def draw_distortion(rng: np.random.Generator) -> Distortion:
    """The reference's draws: each step applied with probability 1/2; brightness delta in
    [-32, 32], contrast and saturation factors in [0.5, 1.5], hue shift in -18..18."""
    contrast_first = bool(rng.integers(2))
    brightness = float(rng.uniform(-32, 32)) if rng.integers(2) else None
    contrast = None
    if contrast_first and rng.integers(2):
        contrast = float(rng.uniform(0.5, 1.5))
    saturation = float(rng.uniform(0.5, 1.5)) if rng.integers(2) else None
    hue = int(rng.integers(-18, 19)) if rng.integers(2) else None
    if not contrast_first and rng.integers(2):
        contrast = float(rng.uniform(0.5, 1.5))
    return Distortion(contrast_first, brightness, contrast, saturation, hue)


def _linear_table(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """What ``uint8(clip(v * alpha + beta, 0, 255))`` gives for every v (truncation, as
    the reference's assignment of floats into a uint8 image)."""
    return np.clip(np.arange(256) * alpha + beta, 0, 255).astype(np.uint8)


def distort(image: np.ndarray, distortion: Distortion) -> np.ndarray:
    """The reference's photometric distortion with the given draws, on a BGR uint8
    image (a new image; the input is not changed)."""
    identity = np.arange(256, dtype=np.uint8)
    before = _linear_table(beta=distortion.brightness) if distortion.brightness is not None else identity
    after = identity
    if distortion.contrast is not None:
        if distortion.contrast_first:
            before = _linear_table(alpha=distortion.contrast)[before]
        else:
            after = _linear_table(alpha=distortion.contrast)
    image = cv2.LUT(image, before)
    if distortion.saturation is not None or distortion.hue is not None:
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hue = (np.arange(256) + (distortion.hue or 0)) % 180 if distortion.hue is not None else identity
        saturation = _linear_table(alpha=distortion.saturation) if distortion.saturation is not None else identity
        table = np.stack([hue.astype(np.uint8), saturation, identity], axis=-1)[:, None, :]
        image = cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2BGR)
    if after is not identity:
        image = cv2.LUT(image, after)
    return image


def pad_to_square(image: np.ndarray, fill: Sequence[float] = MEAN_BGR) -> np.ndarray:
    """The image in the top-left corner of a square of its longer side, filled with
    ``fill`` (the reference's padding when no crop was found)."""
    height, width = image.shape[:2]
    side = max(height, width)
    return cv2.copyMakeBorder(
        image, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT, value=[float(v) for v in fill]
    )


def normalise_faces(faces: np.ndarray, side: int) -> np.ndarray:
    """Pixels of a ``side`` x ``side`` image to [0, 1]; labels and missing landmarks kept."""
    faces = faces.copy()
    faces[:, 0:4] /= side
    labelled = faces[:, LABEL] > 0
    faces[labelled, LANDMARKS] /= side
    return faces


def mirror_faces(faces: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Faces of an image of ``width`` mirrored left-right: boxes flipped, landmark x
    flipped, left and right eyes and mouth corners swapped (labelled faces only)."""
    faces = faces.copy()
    faces[:, [0, 2]] = width - faces[:, [2, 0]]
    labelled = faces[:, LABEL] > 0
    points = faces[labelled, LANDMARKS].copy()
    points[:, 0::2] = width - points[:, 0::2]
    faces[np.ix_(labelled, np.arange(4, 14))] = points[:, [c - 4 for c in _SWAP_LEFT_RIGHT]]
    return faces


class TrainTransform:
    """``(image, target) -> (image [3, S, S] float32, target [G', 15] float32)``: the
    reference training augmentation (see the module's docstring for where it differs).

    ``image`` is BGR uint8 ``[H, W, 3]``; ``target`` holds pixel boxes and landmarks as
    :class:`retinaface_ext.data.WiderFaceDataset` gives them. The output image is BGR
    minus ``mean``; boxes and landmarks are in [0, 1] of it (landmarks of faces labelled
    -1 are -1). Repeatable: ``seed`` (an int, or a ``numpy.random.Generator`` to draw
    from; or :meth:`reseed`) fixes every draw.

    Args:
        image_size: the side S of the square training image.
        mean: subtracted from B, G, R; also the padding colour.
        crop_scales, crop_tries: the crop square's side as a fraction of the short side,
            and how many squares to try before padding the whole image instead.
        distort, mirror: turn the photometric distortion or the mirror (p = 0.5) off.
        interpolations: the OpenCV interpolations the resize draws from (the reference's five).
        subtract_mean: with False the image stays uint8 (BGR, ``[3, S, S]``): a quarter
            of the bytes to pass from loader workers and to copy to the GPU; subtract
            the mean there with :meth:`retinaface_ext.data.Batch.normalized` (same values).
    """

    def __init__(
        self,
        image_size: int = 640,
        mean: Sequence[float] = MEAN_BGR,
        crop_scales: Sequence[float] = CROP_SCALES,
        crop_tries: int = CROP_TRIES,
        distort: bool = True,
        mirror: bool = True,
        subtract_mean: bool = True,
        interpolations: Sequence[int] = INTERPOLATIONS,
        seed: Optional[int] = None,
    ):
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}")
        if not crop_scales or not all(0 < s <= 1 for s in crop_scales):
            raise ValueError(f"crop_scales must be fractions in (0, 1], got {tuple(crop_scales)}")
        if len(mean) != 3:
            raise ValueError(f"mean must hold 3 values (B, G, R), got {tuple(mean)}")
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.crop_scales = tuple(float(s) for s in crop_scales)
        self.crop_tries = int(crop_tries)
        self.distort = bool(distort)
        self.mirror = bool(mirror)
        self.subtract_mean = bool(subtract_mean)
        self.interpolations = tuple(int(i) for i in interpolations)
        if not self.interpolations:
            raise ValueError("interpolations must name at least one OpenCV interpolation")
        self.reseed(seed)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(image_size={self.image_size}, crop_scales={self.crop_scales}, "
            f"distort={self.distort}, mirror={self.mirror})"
        )

    def reseed(self, seed: Optional[int]) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, target) -> Tuple[torch.Tensor, torch.Tensor]:
        target = _as_target(target)
        return self.apply(image, target, self.draw(image, target))

    def draw(self, image: np.ndarray, target: np.ndarray) -> Draws:
        height, width = image.shape[:2]
        crop = draw_crop(self.rng, height, width, target[:, BOX], self.crop_scales, self.crop_tries)
        distortion = draw_distortion(self.rng) if self.distort else None
        mirror = bool(self.rng.integers(2)) if self.mirror else False
        interpolation = self.interpolations[self.rng.integers(len(self.interpolations))]
        return Draws(crop, distortion, mirror, interpolation)

    def apply(self, image: np.ndarray, target, draws: Draws) -> Tuple[torch.Tensor, torch.Tensor]:
        target = _as_target(target)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be a [H, W, 3] uint8 BGR array, got {image.dtype} {image.shape}")
        if draws.crop is not None:
            image, faces = crop_faces(image, target, draws.crop)
        else:
            faces = target.copy()
            faces[faces[:, LABEL] <= 0, LANDMARKS] = NO_LANDMARKS
        if draws.distortion is not None:
            image = distort(image, draws.distortion)
        if draws.crop is None:
            image = pad_to_square(image, self.mean)
        faces = normalise_faces(faces, image.shape[0])
        image = cv2.resize(image, (self.image_size, self.image_size), interpolation=draws.interpolation)
        if draws.mirror:
            image = cv2.flip(image, 1)
            faces = mirror_faces(faces)
        planes = cv2.split(image)  # HWC to CHW, the fastest way found
        if not self.subtract_mean:
            return torch.from_numpy(np.stack(planes)), torch.from_numpy(faces)
        output = np.empty((3, self.image_size, self.image_size), dtype=np.float32)
        for channel, (plane, mean) in enumerate(zip(planes, self.mean)):
            cv2.subtract(plane, mean, dst=output[channel], dtype=cv2.CV_32F)
        return torch.from_numpy(output), torch.from_numpy(faces)


def _as_target(target) -> np.ndarray:
    target = target.numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    target = (
        target.astype(np.float32, copy=False).reshape(-1, WIDTH)
        if target.size == 0
        else target.astype(np.float32, copy=False)
    )
    if target.ndim != 2 or target.shape[1] != 15:
        raise ValueError(f"target must be [G, 15] (x1 y1 x2 y2, ten landmark values, label), got {target.shape}")
    return target
