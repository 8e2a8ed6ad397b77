"""The whole post-processing of a RetinaFace batch as one op, on our kernels."""

from typing import Optional, Sequence, Tuple

import torch

from .. import _extension
from ._checks import check_detect_faces
from ._common import check_tensors

#: ``counts[b]`` of an image whose face scores (over all its priors) are NaN or inf.
NON_FINITE_SCORES = -1
#: ``counts[b]`` of an image with a decoded candidate box or landmark that is NaN or inf.
NON_FINITE_CANDIDATES = -2


def detect_faces(
    loc: torch.Tensor,
    logits: torch.Tensor,
    landm: torch.Tensor,
    priors: torch.Tensor,
    canvas_size: Tuple[int, int],
    inside: Optional[torch.Tensor] = None,
    factor: Optional[torch.Tensor] = None,
    variances: Sequence[float] = (0.1, 0.2),
    score_threshold: float = 0.02,
    top_k: int = 5000,
    nms_threshold: float = 0.4,
    keep_top_k: int = 750,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The faces of a batch from the network's outputs, per image: face scores (the
    two-class softmax), the priors above ``score_threshold`` decoded into pixels, the
    ``top_k`` best of them through NMS at ``nms_threshold``, the first ``keep_top_k``
    survivors kept.

    Args:
        loc: ``[B, P, 4]`` box offsets; logits: ``[B, P, 2]`` (background, face) raw
            scores; landm: ``[B, P, 10]`` landmark offsets; priors: ``[P, 4]`` cx, cy,
            w, h of the canvas (normalised). float32 or float64, one device.
        canvas_size: (height, width) in pixels of the canvas the priors cover.
        inside: ``[B, P]`` multiplies the face scores (0 for priors in an image's
            padding), or None.
        factor: ``[B]`` each image's resize factor: boxes and landmarks are divided by
            it (into the original image's pixels), or None.

    Returns:
        ``boxes [K, 4]`` x1y1x2y2, ``scores [K]``, ``landmarks [K, 10]`` of all images,
        by image and within an image by decreasing score (equal scores: lower prior
        first), and ``counts [B]`` int64: each image's number of detections, or
        :data:`NON_FINITE_SCORES` / :data:`NON_FINITE_CANDIDATES` for an image whose
        values are not finite (which keeps none). Not differentiable.
    """
    check_tensors("detect_faces", loc=loc, logits=logits, landm=landm, priors=priors, inside=inside, factor=factor)
    if not (isinstance(canvas_size, (tuple, list, torch.Size)) and len(canvas_size) == 2):
        raise ValueError(f"detect_faces: canvas_size must be (height, width), got {canvas_size!r}")
    height, width = (int(v) for v in canvas_size)
    return torch.ops.retinaface_ext.detect_faces(
        loc,
        logits,
        landm,
        priors,
        inside,
        factor,
        height,
        width,
        [float(v) for v in variances],
        float(score_threshold),
        int(top_k),
        float(nms_threshold),
        int(keep_top_k),
    )


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::detect_faces")
    def _detect_faces_fake(*args):
        check_detect_faces(*args)  # the schema's arguments, in its order
        loc = args[0]
        k = torch.library.get_ctx().new_dynamic_size()
        counts = loc.new_empty((loc.shape[0],), dtype=torch.long)
        return loc.new_empty((k, 4)), loc.new_empty((k,)), loc.new_empty((k, 10)), counts
