"""Box and landmark coding against priors, and the fused decode for detection.

``encode``/``decode``/``encode_landm``/``decode_landm`` are elementwise and batched over
any leading dimensions; PyTorch already runs them at memory speed and differentiates
them, so they are the reference functions themselves. The kernel is
:func:`decode_detections`, which decodes only the priors that pass the score threshold.
"""

from typing import Sequence, Tuple

import torch

from .. import _extension
from . import reference
from ._checks import check_decode_detections
from ._common import check_tensors
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
        in the priors' normalised coordinates. Differentiable with respect to ``loc``,
        ``conf``, ``landm`` and ``priors`` (the selection itself is not).
    """
    check_tensors("decode_detections", loc=loc, conf=conf, landm=landm, priors=priors)
    return torch.ops.retinaface_ext.decode_detections(
        loc, conf, landm, priors, [float(v) for v in variances], float(score_threshold)
    )


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::decode_detections")
    def _decode_detections_fake(loc, conf, landm, priors, variances, score_threshold):
        check_decode_detections(loc, conf, landm, priors, variances)
        k = torch.library.get_ctx().new_dynamic_size()
        index = loc.new_empty((k,), dtype=torch.long)
        return loc.new_empty((k, 4)), loc.new_empty((k,)), loc.new_empty((k, 10)), index, index.clone()

    def _decode_setup_context(ctx, inputs, output):
        loc, conf, landm, priors, variances, _ = inputs
        ctx.save_for_backward(loc, conf, landm, priors, output[3], output[4])
        ctx.variances = variances

    def _decode_backward(ctx, grad_boxes, grad_scores, grad_landmarks, _image_grad, _prior_grad):
        # Each candidate is the reference's decode of one (image, prior) row; its gradient
        # goes back to that row (and to the prior, shared by the images).
        loc, conf, landm, priors, image, prior = ctx.saved_tensors
        variances = ctx.variances

        def decode_rows(loc_rows, landm_rows, prior_rows):
            return reference.decode(loc_rows, prior_rows, variances), reference.decode_landm(
                landm_rows, prior_rows, variances
            )

        _, vjp = torch.func.vjp(decode_rows, loc[image, prior], landm[image, prior], priors[prior])
        grad_boxes = grad_boxes if grad_boxes is not None else loc.new_zeros(image.shape[0], 4)
        grad_landmarks = grad_landmarks if grad_landmarks is not None else loc.new_zeros(image.shape[0], 10)
        grad_loc_rows, grad_landm_rows, grad_prior_rows = vjp((grad_boxes, grad_landmarks))
        grad_loc = torch.zeros_like(loc).index_put((image, prior), grad_loc_rows)
        grad_landm = torch.zeros_like(landm).index_put((image, prior), grad_landm_rows)
        grad_priors = torch.zeros_like(priors).index_add(0, prior, grad_prior_rows)
        grad_conf = torch.zeros_like(conf)
        if grad_scores is not None:
            grad_conf = grad_conf.index_put((image, prior, torch.ones_like(prior)), grad_scores)
        return grad_loc, grad_conf, grad_landm, grad_priors, None, None

    torch.library.register_autograd(
        "retinaface_ext::decode_detections", _decode_backward, setup_context=_decode_setup_context
    )
