"""Levels: one image through the network more than once and its faces merged into one set.

A level is the image (or a region of it) resized by a scale on top of the detector's own
resizing, and possibly mirrored. Enlarged levels find the small faces of a crowd that the
original size misses; a level that enlarges less sees the large ones whole. Pooling every
level's faces naively loses what it gains (each level adds its false positives and its
poorly placed boxes for faces it sees badly), so each level keeps only the faces it sees
well: by their size in its own network pixels (``FACE_SIZES``), as SNIP and insightface do.

``scales="auto"`` looks first at the detector's own size, then once more, enlarged
``AUTO_SCALE`` times, at the one region where that look found small faces (none: no second
look). The faces of the levels are merged by NMS or by box voting (:func:`merge`).
"""

import math
import numbers
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .. import ops
from ..models.config import DetectionSettings
from .detections import Detections

MERGES = ("nms", "vote")
#: The face sizes a level keeps, in its own network pixels (the square root of the box's
#: area): at least the first, unless no level enlarges more; at most the second, unless no
#: level enlarges less. Chosen on the five WIDER FACE val photos of ../shared (176 faces):
#: with 28 px added levels cost least there (scales 0.5, 1, 1.5, 2: 0.8861 against 0.8863
#: for 2x alone; 24 gave 0.885, 30 to 36 no better); for scales 1 and 2.5 with voting,
#: 16 / 24 / 28 / 32 / none gave 0.916 / 0.914 / 0.914 / 0.912 / 0.899. 160 is reasoned, not
#: measured (no large face there): a face that large at a level that has a smaller one is
#: seen whole by the smaller level.
FACE_SIZES = (28.0, 160.0)
#: scales="auto": the faces of the first look with at least this score that are smaller
#: than AUTO_SMALL network pixels there mark the region looked at again, where the first
#: look keeps only its faces of AUTO_SMALL or more (24: 0.904 AP on those photos, 28: 0.901).
AUTO_SCORE = 0.1
AUTO_SMALL = 24.0
#: scales="auto": how much the second look enlarges its region (less when the pixel budget
#: says so).
AUTO_SCALE = 2.5
#: The five landmarks of a mirrored face, in the order of the face as seen unmirrored: the
#: left eye of the mirror image is the right eye of the image.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)


class Level(NamedTuple):
    """One pass of an image: resized by ``scale`` (times the detector's own factor),
    mirrored when ``flip``, of the region ``crop`` (x1, y1, x2, y2, whole pixels of the
    image; None: all of it). It keeps the faces whose size in its network pixels lies in
    ``sizes``; where ``sized_in`` is set, only the faces centred there are held to
    ``sizes`` (the others are kept); where ``region`` is set, only the faces centred in it
    are kept at all."""

    scale: float = 1.0
    flip: bool = False
    crop: Optional[Tuple[int, int, int, int]] = None
    sizes: Tuple[float, float] = (0.0, math.inf)
    sized_in: Optional[Tuple[float, float, float, float]] = None
    region: Optional[Tuple[float, float, float, float]] = None


@dataclass(frozen=True)
class LevelSettings:
    """How many times the Detector looks at an image: ``scales`` (factors applied after its
    ``target_size`` / ``max_size`` resize, or ``"auto"``), ``flip`` (each level mirrored
    too) and ``merge`` (``"nms"`` or ``"vote"``: how the levels' faces become one set).
    The default, one scale of 1 without flip, is the plain single pass."""

    scales: Union[Tuple[float, ...], str] = (1.0,)
    flip: bool = False
    merge: str = "nms"

    def __post_init__(self):
        scales = self.scales
        if isinstance(scales, str):
            if scales != "auto":
                raise ValueError(f"scales must be 'auto' or a sequence of factors > 0, got {scales!r}")
        else:
            try:
                values = tuple(scales)
            except TypeError:
                raise ValueError(f"scales must be 'auto' or a sequence of factors > 0, got {scales!r}") from None
            if not values:
                raise ValueError("scales must hold at least one factor, got ()")
            for value in values:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, numbers.Real)
                    or not math.isfinite(value)
                    or value <= 0
                ):
                    raise ValueError(f"scales must be finite factors > 0, got {value!r} in {scales!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"scales must not repeat a factor, got {scales!r}")
            object.__setattr__(self, "scales", tuple(sorted(float(v) for v in values)))
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be True or False, got {self.flip!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}")

    @property
    def single(self) -> bool:
        """One plain pass: the Detector's path without levels."""
        return self.scales == (1.0,) and not self.flip

    @property
    def largest_scale(self) -> float:
        """The largest fixed scale (1 for auto, whose second look fits the pixel budget)."""
        return 1.0 if self.scales == "auto" else self.scales[-1]

    def first_levels(self) -> List[Level]:
        """The levels every image gets: all of them for fixed scales, the first look for auto."""
        flips = (False, True) if self.flip else (False,)
        if self.scales == "auto":
            return [Level(1.0, flip) for flip in flips]
        scales, (low, high) = self.scales, FACE_SIZES
        return [
            Level(scale, flip, sizes=(low if scale != scales[-1] else 0.0, high if scale != scales[0] else math.inf))
            for scale in scales
            for flip in flips
        ]


def auto_levels(
    first: Sequence[Level], faces: Detections, factor: float, image_size: Tuple[int, int], max_pixels: int
) -> Tuple[List[Level], List[Level]]:
    """scales="auto": from the faces the first look found (``faces``, the unmirrored first
    level's, in the image's pixels; ``factor`` the detector's resize), the first levels
    with their size filter and the second look's levels (none when it found no small face).
    The second look sees the smallest region (a margin of AUTO_SMALL network pixels
    around them) holding the small faces, enlarged AUTO_SCALE times or as much as
    ``max_pixels`` allows; it keeps the faces centred where the first look's small faces
    were (the margin halved), where the first look keeps only its larger faces."""
    low = AUTO_SMALL
    boxes = faces.boxes.detach().double().cpu()
    size = (boxes[:, 2] - boxes[:, 0]).clamp(min=0).mul((boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt() * factor
    small = (faces.scores.detach().cpu() >= AUTO_SCORE) & (size < low)
    if not bool(small.any()):
        return list(first), []
    height, width = image_size
    margin = low / factor
    x1, y1 = boxes[small, 0].min().item(), boxes[small, 1].min().item()
    x2, y2 = boxes[small, 2].max().item(), boxes[small, 3].max().item()
    region = (x1 - margin / 2, y1 - margin / 2, x2 + margin / 2, y2 + margin / 2)
    crop = (
        max(0, math.floor(x1 - margin)),
        max(0, math.floor(y1 - margin)),
        min(width, math.ceil(x2 + margin)),
        min(height, math.ceil(y2 + margin)),
    )
    if crop[2] <= crop[0] or crop[3] <= crop[1]:  # small faces found outside the image only
        return list(first), []
    pixels = (crop[2] - crop[0]) * (crop[3] - crop[1]) * factor**2
    scale = min(AUTO_SCALE, math.sqrt(max_pixels / pixels))
    if scale <= 1.0:
        return list(first), []
    sized = [level._replace(sizes=(low, math.inf), sized_in=region) for level in first]
    second = [Level(scale, level.flip, crop, (0.0, FACE_SIZES[1]), region=region) for level in first]
    return sized, second


def place(faces: Detections, level: Level, factor: float, image_size: Tuple[int, int]) -> Detections:
    """A level's ``faces`` (in the pixels of what it saw: its crop, maybe mirrored, resized
    back by the detector) in the image's pixels, the faces the level does not keep left out.
    ``factor`` is the level's resize (the detector's times its scale)."""
    boxes, landmarks = faces.boxes, faces.landmarks
    if level.flip:
        width = faces.image_size[1]
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        landmarks = landmarks[:, list(MIRRORED_LANDMARKS)]
        landmarks = torch.stack([width - landmarks[..., 0], landmarks[..., 1]], -1)
    if level.crop is not None:
        x, y = level.crop[0], level.crop[1]
        boxes = boxes + boxes.new_tensor([x, y, x, y])
        landmarks = landmarks + landmarks.new_tensor([x, y])
    keep = None
    low, high = level.sizes
    if low > 0 or high < math.inf:
        size = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt() * factor
        keep = (size >= low) & (size <= high)
        if level.sized_in is not None:
            keep |= ~_centred_in(boxes, level.sized_in)
    if level.region is not None:
        inside = _centred_in(boxes, level.region)
        keep = inside if keep is None else keep & inside
    placed = Detections(boxes, faces.scores, landmarks, tuple(image_size))
    return placed if keep is None else placed[keep]


def _centred_in(boxes: torch.Tensor, region: Tuple[float, float, float, float]) -> torch.Tensor:
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    return (x >= region[0]) & (x < region[2]) & (y >= region[1]) & (y < region[3])


def merge(images: Sequence[Sequence[Detections]], how: str, settings: DetectionSettings) -> List[Detections]:
    """One set of faces per image from the faces of its levels (already placed), all images
    in one call of our ops: ``"nms"`` keeps the best of faces overlapping by more than
    ``settings.nms_threshold``; ``"vote"`` (:func:`~retinaface_ext.ops.box_vote`) makes each
    group of faces overlapping the best by that much or more one face, box and landmarks the
    score-weighted mean, score the best's. At most ``keep_top_k`` faces each, best first."""
    if not images:
        return []
    image_size = [levels[0].image_size for levels in images]
    counts = [sum(len(faces) for faces in levels) for levels in images]
    boxes = torch.cat([faces.boxes for levels in images for faces in levels])
    scores = torch.cat([faces.scores for levels in images for faces in levels])
    landmarks = torch.cat([faces.landmarks.reshape(-1, 10) for levels in images for faces in levels])
    idxs = torch.repeat_interleave(
        torch.arange(len(images), device=boxes.device), torch.tensor(counts).to(boxes.device)
    )
    if how == "vote":
        boxes, scores, landmarks, idxs = ops.box_vote(boxes, scores, landmarks, settings.nms_threshold, idxs)
    else:
        keep = ops.batched_nms(boxes, scores, idxs, settings.nms_threshold)
        keep = keep[torch.argsort(idxs[keep], stable=True)]  # by image, each best first
        boxes, scores, landmarks, idxs = boxes[keep], scores[keep], landmarks[keep], idxs[keep]
    kept = torch.bincount(idxs, minlength=len(images)).tolist()
    merged = []
    for image_boxes, image_scores, image_landmarks, size in zip(
        boxes.split(kept), scores.split(kept), landmarks.split(kept), image_size
    ):
        top = settings.keep_top_k
        merged.append(Detections(image_boxes[:top], image_scores[:top], image_landmarks[:top].reshape(-1, 5, 2), size))
    return merged
