"""The modules that are exported: the network alone, and the network with the whole
post-processing (priors for the input's size, decoding, top-k, NMS), written in
operations that torch.export keeps symbolic in the batch, height and width."""

from typing import Optional, Tuple

import torch
from torch import nn

from ..models import InferenceRetinaFace
from ..models.config import DetectionSettings
from ..ops import reference
from ..priors import make_prior_boxes
from .onnx_ops import nms_per_image

#: The names of the graphs' inputs and outputs (see :func:`retinaface_ext.export.to_onnx`).
NETWORK_INPUTS = ("images",)
NETWORK_OUTPUTS = ("loc", "logits", "landmarks")
DETECTION_OUTPUTS = ("boxes", "scores", "landmarks", "image_index")


class DetectionGraph(nn.Module):
    """Faces from raw images in one module: ``images [B, 3, H, W]`` float BGR in 0..255
    (the mean is subtracted here) -> ``boxes [K, 4]`` x1, y1, x2, y2 in the input's
    pixels, ``scores [K]``, ``landmarks [K, 5, 2]``, ``image_index [K]`` (int64), by
    image, each image best first.

    The Detector's semantics for one batch of equally sized images, with its
    :class:`~retinaface_ext.models.DetectionSettings`: face score sigmoid(face -
    background), the ``top_k`` best priors per image, NMS per image over those scoring
    above ``score_threshold``, at most ``keep_top_k`` kept.
    """

    def __init__(self, network: InferenceRetinaFace, settings: Optional[DetectionSettings] = None):
        super().__init__()
        self.network = network
        self.config, self.settings = network.config, settings or DetectionSettings()
        self.register_buffer("mean", torch.tensor(self.config.mean_bgr).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, logits, landm = self.network(images - self.mean)
        height, width = images.shape[2], images.shape[3]
        priors = make_prior_boxes(
            height, width, self.config.min_sizes, self.config.steps, device=loc.device, dtype=loc.dtype
        )
        scale = torch.stack([torch.full((), width), torch.full((), height)]).to(loc.dtype)
        boxes = reference.decode(loc, priors, self.config.variances) * scale.repeat(2)
        landmarks = reference.decode_landm(landm, priors, self.config.variances) * scale.repeat(5)
        face = torch.sigmoid(logits[..., 1] - logits[..., 0])
        settings = self.settings
        scores, order = face.topk(torch.sym_min(settings.top_k, face.shape[1]), dim=1)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        landmarks = landmarks.gather(1, order[..., None].expand(-1, -1, 10))
        selected = nms_per_image(boxes, scores, settings.keep_top_k, settings.nms_threshold, settings.score_threshold)
        image, index = selected[:, 0], selected[:, 1]
        return boxes[image, index], scores[image, index], landmarks[image, index].reshape(-1, 5, 2), image
