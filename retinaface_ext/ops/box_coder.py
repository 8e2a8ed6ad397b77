"""Box and landmark coding against priors, and the fused decode for detection.

``encode``/``decode``/``encode_landm``/``decode_landm`` are elementwise and batched over
any leading dimensions; PyTorch already runs them at memory speed and differentiates
them, so they are the reference functions themselves. The kernel is
:func:`decode_detections`, which decodes only the priors that pass the score threshold.
"""

from typing import Sequence, Tuple

import torch

from .. import _extension
from .reference import decode, decode_landm, encode, encode_landm  # noqa: F401


def decode_detections(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landm: torch.Tensor,
    priors: torch.Tensor,
    variances: Sequence[float] = (0.1, 0.2),
    score_threshold: float = 0.02,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detection candidates of a batch: the priors whose face score passes the threshold,
    decoded, with no full-size intermediate tensors.

    Args:
        loc: ``[B, P, 4]`` box offsets; conf: ``[B, P, 2]`` (background, face)
            probabilities; landm: ``[B, P, 10]`` landmark offsets; priors: ``[P, 4]``
            cx, cy, w, h.
        score_threshold: a prior is a candidate when ``conf[b, p, 1] > score_threshold``.

    Returns:
        ``boxes [K, 4]`` x1y1x2y2, ``scores [K]``, ``landmarks [K, 10]``,
        ``image_index [K]`` and ``prior_index [K]`` (int64), in image-then-prior order,
        in the priors' normalised coordinates.
    """
    _extension.require(loc)
    return torch.ops.retinaface_ext.decode_detections(
        loc, conf, landm, priors, [float(v) for v in variances], float(score_threshold)
    )


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::decode_detections")
    def _decode_detections_fake(loc, conf, landm, priors, variances, score_threshold):
        torch._check(loc.dim() == 3 and loc.shape[-1] == 4, lambda: "decode_detections: bad loc shape")
        k = torch.library.get_ctx().new_dynamic_size()
        index = loc.new_empty((k,), dtype=torch.long)
        return loc.new_empty((k, 4)), loc.new_empty((k,)), loc.new_empty((k, 10)), index, index.clone()
