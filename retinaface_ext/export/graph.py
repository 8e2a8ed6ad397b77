"""The modules that are exported: the network alone, and the network with the whole
post-processing, whose outputs are exactly what :func:`retinaface_ext.ops.detect_faces`
returns. For an AOTInductor package the post-processing is our ``detect_faces`` op; for
ONNX it is :func:`detect_faces_onnx`, the reference written in operations that ONNX
has and that torch.export keeps symbolic in the batch, height and width."""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..models import InferenceRetinaFace
from ..models.config import DetectionSettings
from ..ops import reference
from ..ops.detect_faces import NON_FINITE_CANDIDATES, NON_FINITE_SCORES
from ..priors import make_prior_boxes
from .onnx_ops import nms_per_image, top_k_per_image

#: The names of the graphs' inputs and outputs (see :func:`retinaface_ext.export.to_onnx`).
NETWORK_INPUTS = ("images",)
NETWORK_OUTPUTS = ("loc", "logits", "landmarks")
#: ``detect_faces``' outputs: boxes [K, 4], scores [K], landmarks [K, 10], counts [B].
DETECTION_OUTPUTS = ("boxes", "scores", "landmarks", "counts")
#: The detection graph's outputs before 0.2 (landmarks [K, 5, 2] and an image index).
OLD_DETECTION_OUTPUTS = ("boxes", "scores", "landmarks", "image_index")


def detect_faces_onnx(
    loc: torch.Tensor,
    logits: torch.Tensor,
    landm: torch.Tensor,
    priors: torch.Tensor,
    inside: Optional[torch.Tensor],
    factor: Optional[torch.Tensor],
    canvas_size: Tuple[int, int],
    variances: Sequence[float],
    score_threshold: float,
    top_k: int,
    nms_threshold: float,
    keep_top_k: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`retinaface_ext.ops.reference.detect_faces` (same arguments, outputs and
    semantics) without a loop over the images or a data-dependent branch: decoded in
    one piece, the ``top_k`` best priors per image, then one NMS for the batch that ONNX
    writes as ``NonMaxSuppression``. An image whose values are not finite keeps nothing
    and gets its negative count, as the reference's."""
    height, width = canvas_size
    face = torch.sigmoid(logits[..., 1] - logits[..., 0])
    face = face if inside is None else face * inside
    scale = torch.stack([torch.full((), width), torch.full((), height)]).to(loc.dtype)
    boxes = reference.decode(loc, priors, variances) * scale.repeat(2)
    landmarks = reference.decode_landm(landm, priors, variances) * scale.repeat(5)
    if factor is not None:
        boxes, landmarks = boxes / factor[:, None, None], landmarks / factor[:, None, None]
    finite_scores = torch.isfinite(face).all(1)
    candidate = face > score_threshold
    finite_values = torch.isfinite(boxes).all(-1) & torch.isfinite(landmarks).all(-1)
    finite_candidates = ~(candidate & ~finite_values).any(1)
    usable = finite_scores & finite_candidates
    # An unusable image's scores fall below the threshold, so that NMS sees none of it.
    face = torch.where(usable[:, None], face, torch.full_like(face, -1.0))
    scores, order = top_k_per_image(face, top_k)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    landmarks = landmarks.gather(1, order[..., None].expand(-1, -1, 10))
    selected = nms_per_image(boxes, scores, keep_top_k, nms_threshold, score_threshold)
    image, index = selected[:, 0], selected[:, 1]
    counts = (image[None, :] == torch.arange(loc.shape[0], device=loc.device)[:, None]).sum(1)
    counts = torch.where(finite_candidates, counts, torch.full_like(counts, NON_FINITE_CANDIDATES))
    counts = torch.where(finite_scores, counts, torch.full_like(counts, NON_FINITE_SCORES))
    return boxes[image, index], scores[image, index], landmarks[image, index], counts


class DetectionGraph(nn.Module):
    """Faces from raw images in one module: ``images [B, 3, H, W]`` float BGR in 0..255
    (the mean is subtracted here) -> ``boxes [K, 4]`` x1, y1, x2, y2 in the input's
    pixels, ``scores [K]``, ``landmarks [K, 10]``, ``counts [B]`` (int64), by image and
    each image best first: what :func:`retinaface_ext.ops.detect_faces` returns for the
    batch with the Detector's :class:`~retinaface_ext.models.DetectionSettings`.

    ``onnx``: the post-processing in ONNX's operations (:func:`detect_faces_onnx`), else
    our ``detect_faces`` op (for AOTInductor packages, which call into our library).
    """

    def __init__(self, network: InferenceRetinaFace, settings: Optional[DetectionSettings] = None, onnx: bool = False):
        super().__init__()
        self.network, self.onnx = network, onnx
        self.config, self.settings = network.config, settings or DetectionSettings()
        self.register_buffer("mean", torch.tensor(self.config.mean_bgr).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, logits, landm = self.network(images - self.mean)
        height, width = images.shape[2], images.shape[3]
        priors = make_prior_boxes(
            height, width, self.config.min_sizes, self.config.steps, device=loc.device, dtype=loc.dtype
        )
        s, variances = self.settings, list(self.config.variances)
        if self.onnx:
            return detect_faces_onnx(
                loc, logits, landm, priors, None, None, (height, width), variances, *s.op_arguments()
            )
        return torch.ops.retinaface_ext.detect_faces(
            loc, logits, landm, priors, None, None, height, width, variances, *s.op_arguments()
        )
