"""Batched IoU and batched prior matching (training targets), on our kernels."""

from typing import Sequence, Tuple

import torch

from .. import _extension
from . import reference
from ._common import check_tensors


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of x1y1x2y2 boxes: [N, 4] x [M, 4] -> [N, M], or [B, N, 4] x [B, M, 4] -> [B, N, M].

    Areas are (x2 - x1) * (y2 - y1), as in torchvision's box_iou, which this replaces
    for every dtype it takes: float64 boxes give float64; float32, float16, bfloat16,
    integer and bool boxes give float32 (half precision is computed in float32, integers
    exactly in float64 and rounded once). Differentiable with respect to both inputs.
    """
    if not torch.jit.is_scripting():
        check_tensors("box_iou", boxes1=boxes1, boxes2=boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if dtype == torch.float64 or dtype == torch.float32:
        return torch.ops.retinaface_ext.box_iou(boxes1.to(dtype), boxes2.to(dtype))
    if dtype == torch.float16 or dtype == torch.bfloat16:
        return torch.ops.retinaface_ext.box_iou(boxes1.float(), boxes2.float())
    # Integers: inter and union are exact in float64, and the quotient rounded to float32
    # equals torchvision's float32 division of the two integers.
    return torch.ops.retinaface_ext.box_iou(boxes1.double(), boxes2.double()).float()


def match(
    truths: torch.Tensor,
    labels: torch.Tensor,
    landmarks: torch.Tensor,
    num_truths: torch.Tensor,
    priors: torch.Tensor,
    threshold: float = 0.35,
    variances: Sequence[float] = (0.1, 0.2),
    check: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets for a whole batch in one call; each image's targets equal
    Pytorch_Retinaface's ``match()`` for it.

    Args:
        truths: ``[B, G, 4]`` x1, y1, x2, y2 (normalised by the image size); rows past
            ``num_truths[b]`` are padding and are ignored whatever they hold.
        labels: ``[B, G]``, 1 for a face with landmarks, -1 for a face without
            (converted to int64).
        landmarks: ``[B, G, 10]``, five (x, y) points.
        num_truths: ``[B]`` int64, the number of real truths of each image.
        priors: ``[P, 4]`` cx, cy, w, h, as from :func:`retinaface_ext.priors.prior_boxes`.
        threshold: priors whose overlap with their truth is below this are background
            (an IoU in [0, 1]).
        variances: the box coding variances.
        check: on CUDA, validate the values (num_truths in range; finite, non-empty
            truths; finite landmarks; finite priors of positive size) first, at the cost
            of one host synchronisation; pass False where the data are known to be
            valid. The CPU kernel always validates them (it costs next to nothing).

    Returns:
        ``loc_t [B, P, 4]``, ``conf_t [B, P]`` int64 and ``landm_t [B, P, 10]``. An image
        none of whose truths reaches IoU 0.2 with any prior gets all-zero targets.
    """
    check_tensors("match", truths=truths, labels=labels, landmarks=landmarks, priors=priors)
    if isinstance(num_truths, (list, tuple)):
        num_truths = torch.tensor(num_truths, dtype=torch.long, device=truths.device)
    if labels.dtype != torch.long:
        labels = labels.long()
    if check and truths.is_cuda:
        _check_match_values(truths, landmarks, num_truths, priors)
    return torch.ops.retinaface_ext.match(
        truths, labels, landmarks, num_truths, priors, float(threshold), [float(v) for v in variances]
    )


def _first(mask: torch.Tensor):
    return tuple(torch.nonzero(mask)[0].tolist())


def _check_match_values(truths, landmarks, num_truths, priors):
    """Value checks with messages naming the argument and the index (shapes: the op),
    the same as the CPU kernel's."""
    shapes_ok = (
        truths.dim() == 3
        and truths.shape[-1] == 4
        and landmarks.shape[:2] == truths.shape[:2]
        and num_truths.shape == truths.shape[:1]
        and num_truths.dtype == torch.long
        and priors.dim() == 2
        and priors.shape[-1] == 4
        and truths.is_floating_point()
        and num_truths.device == truths.device == landmarks.device == priors.device
    )
    if not shapes_ok:
        return  # the op names the offending argument
    G = truths.shape[1]
    out_of_range = (num_truths < 0) | (num_truths > G)
    valid = torch.arange(G, device=truths.device) < num_truths[:, None]
    x1, y1, x2, y2 = truths.unbind(-1)
    bad_truths = valid & ~torch.isfinite(truths).all(-1)
    empty_truths = valid & ~bad_truths & ((x2 <= x1) | (y2 <= y1))
    bad_landmarks = valid & ~torch.isfinite(landmarks).all(-1)
    bad_priors = ~torch.isfinite(priors).all(-1) | (priors[:, 2] <= 0) | (priors[:, 3] <= 0)
    problems = torch.stack(
        [out_of_range.any(), bad_truths.any(), empty_truths.any(), bad_landmarks.any(), bad_priors.any()]
    )
    if not problems.any():  # the one synchronisation
        return
    if out_of_range.any():
        (b,) = _first(out_of_range)
        raise RuntimeError(
            f"match: num_truths[{b}] = {num_truths[b].item()} is out of range [0, {G}] (G = truths.shape[1])"
        )
    if bad_truths.any():
        b, g = _first(bad_truths)
        raise RuntimeError(f"match: truths[{b}, {g}] = {truths[b, g].tolist()} is not finite")
    if empty_truths.any():
        b, g = _first(empty_truths)
        raise RuntimeError(f"match: truths[{b}, {g}] = {truths[b, g].tolist()} is empty (x2 <= x1 or y2 <= y1)")
    if bad_landmarks.any():
        b, g = _first(bad_landmarks)
        raise RuntimeError(f"match: landmarks[{b}, {g}] is not finite: {landmarks[b, g].tolist()}")
    (p,) = _first(bad_priors)
    raise RuntimeError(f"match: priors[{p}] = {priors[p].tolist()} must be finite with w > 0 and h > 0")


if _extension.is_available():

    def _box_iou_setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _box_iou_backward(ctx, grad):
        # The gradient of the reference's formula, which is torchvision's: the same
        # subgradients at ties and at touching boxes, and itself differentiable.
        boxes1, boxes2 = ctx.saved_tensors
        _, vjp = torch.func.vjp(reference.box_iou, boxes1, boxes2)
        return vjp(grad)

    torch.library.register_autograd("retinaface_ext::box_iou", _box_iou_backward, setup_context=_box_iou_setup_context)
