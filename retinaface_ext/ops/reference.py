"""Pure-PyTorch references of every kernel op: same signatures, same semantics.

Short and obviously right rather than fast; the tests compare the kernels with them.
They run on any device and need no compiled code.
"""

import torch


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] x1y1x2y2 -> [N]; a degenerate box (x2 < x1 or y2 < y1) has zero area."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: boxes [N, 4] x1y1x2y2, scores [N] -> int64 kept indices.

    Kept indices come in decreasing score order, equal scores lower index first; a box
    is dropped when its IoU with a kept box is strictly greater than ``iou_threshold``
    (compared in float64, like torchvision). float16/bfloat16 are computed in float32.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    area = _box_area(boxes)
    suppressed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = boxes[i + 1 :]
        wh = (torch.minimum(boxes[i, 2:], rest[:, 2:]) - torch.maximum(boxes[i, :2], rest[:, :2])).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / (area[i] + area[i + 1 :] - inter)
        for j in torch.nonzero(iou.double() > iou_threshold).flatten().tolist():
            suppressed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS per category ``idxs`` [N]; kept indices of all categories in decreasing score
    order (equal scores: lower index first)."""
    keep = [
        members[nms(boxes[members], scores[members], iou_threshold)]
        for members in (torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs))
    ]
    if not keep:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    keep = torch.sort(torch.cat(keep)).values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
