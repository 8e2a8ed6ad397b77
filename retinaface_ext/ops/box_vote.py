"""Box voting on our kernels: the detections of several passes (pyramid levels, flips)
pooled into one per face, as insightface's ``bbox_vote``."""

from typing import Optional, Tuple

import torch

from .. import _extension
from ._checks import check_box_vote
from ._common import check_tensors


def box_vote(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    landmarks: Optional[torch.Tensor] = None,
    iou_threshold: float = 0.4,
    idxs: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups of detections voted into one each.

    In decreasing score order (equal scores: lower index first), each detection not yet
    taken heads a group: itself and the detections not yet taken, of its category, whose
    IoU with it is at least ``iou_threshold`` (where NMS would drop them: above it). A
    group becomes one detection: its box and landmarks the score-weighted mean of the
    group's (its head's where the scores sum to 0), its score the head's, the group's
    highest (insightface keeps the maximum too).

    Args:
        boxes: ``[N, 4]`` x1, y1, x2, y2, finite; scores: ``[N]``, finite and >= 0 (the
            weights); float32 or float64, one device.
        landmarks: ``[N, D]`` coordinates voted like the boxes (``[N, 10]`` for five
            points), or None.
        idxs: ``[N]`` integer category of each detection (the image, for a batch): only
            detections of one category vote together. None: one category.

    Returns:
        ``boxes [K, 4]``, ``scores [K]``, ``landmarks [K, D]`` (``[K, 0]`` without
        landmarks) and ``idxs [K]`` int64, by category (ascending) and within one best
        first. Not differentiable.
    """
    check_tensors("box_vote", boxes=boxes, scores=scores, landmarks=landmarks, idxs=idxs)
    count = boxes.shape[0] if boxes.dim() >= 1 else 0
    if landmarks is None:
        landmarks = boxes.new_empty((count, 0))
    if idxs is None:
        idxs = torch.zeros(count, dtype=torch.int64, device=boxes.device)
    elif idxs.is_floating_point() or idxs.is_complex():
        raise TypeError(f"box_vote: idxs must hold integer categories, got {idxs.dtype}")
    return torch.ops.retinaface_ext.box_vote(boxes, scores, landmarks, idxs.to(torch.int64), float(iou_threshold))


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::box_vote")
    def _box_vote_fake(boxes, scores, landmarks, idxs, iou_threshold):
        check_box_vote(boxes, scores, landmarks, idxs, iou_threshold)
        kept = torch.library.get_ctx().new_dynamic_size()
        return (
            boxes.new_empty((kept, 4)),
            scores.new_empty((kept,)),
            landmarks.new_empty((kept, landmarks.shape[1])),
            idxs.new_empty((kept,)),
        )
