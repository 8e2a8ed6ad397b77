"""Non-maximum suppression with torchvision's semantics, on our CPU and CUDA kernels.

Both functions compile with ``torch.jit.script`` and ``torch.compile``. Quantized boxes
(torchvision's quantized NMS) are not supported.
"""

import torch

from .. import _extension
from ._checks import check_nms
from ._common import check_tensors


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[N, 4]`` as x1, y1, x2, y2. A degenerate box (x2 < x1 or y2 < y1) has
            zero area. float32/float64 on the CPU; float16/bfloat16/float32/float64 on
            CUDA (IoU computed in float32, float64 for float64).
        scores: ``[N]``, same dtype and device as ``boxes``.
        iou_threshold: a box is dropped when its IoU with a kept box is strictly
            greater than this (>= 0).

    Returns:
        int64 ``[K]``: indices of the kept boxes in decreasing score order; equal scores
        keep the lower index first. NaN or inf in the inputs raises an error.
    """
    if not torch.jit.is_scripting():
        check_tensors("nms", boxes=boxes, scores=scores)
    return torch.ops.retinaface_ext.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS done independently per category: boxes only suppress boxes of their own ``idxs``.

    Args:
        boxes, scores, iou_threshold: as in :func:`nms`.
        idxs: ``[N]`` integer (or bool) category of each box, converted to int64.

    Returns:
        int64 ``[K]``: indices of the kept boxes of all categories, in decreasing score
        order (equal scores: lower index first). Empty input (``boxes`` with no
        elements, whatever its shape) gives an empty result, as torchvision's.
    """
    if not torch.jit.is_scripting():
        check_tensors("batched_nms", boxes=boxes, scores=scores, idxs=idxs)
        if idxs.is_floating_point() or idxs.is_complex():
            raise TypeError(f"batched_nms: idxs must hold integer categories, got {idxs.dtype}")
    # (Not while compiling: there the count may be symbolic, and the kernel takes [0, 4].)
    if not torch.compiler.is_compiling() and boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if idxs.dtype != torch.int64:
        idxs = idxs.to(torch.int64)
    return torch.ops.retinaface_ext.batched_nms(boxes, scores, idxs, float(iou_threshold))


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::nms")
    def _nms_fake(boxes, scores, iou_threshold):
        check_nms("nms", boxes, scores, None, iou_threshold)
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long)

    @torch.library.register_fake("retinaface_ext::batched_nms")
    def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
        check_nms("batched_nms", boxes, scores, idxs, iou_threshold)
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long)
