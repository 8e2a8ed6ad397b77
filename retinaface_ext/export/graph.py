"""The modules that are exported: the network alone, and the network with the whole
post-processing (priors for the input's size, decoding, top-k, NMS), written in
operations that torch.export keeps symbolic in the batch, height and width."""

from typing import Sequence, Tuple

import torch
from torch import nn

from ..models import InferenceRetinaFace
from ..ops import reference
from .onnx_ops import nms_per_image

#: The names of the graphs' inputs and outputs (see :func:`retinaface_ext.export.to_onnx`).
NETWORK_INPUTS = ("images",)
NETWORK_OUTPUTS = ("loc", "logits", "landmarks")
DETECTION_OUTPUTS = ("boxes", "scores", "landmarks", "image_index")
MEAN_BGR = (104.0, 117.0, 123.0)


def symbolic_priors(height, width, min_sizes: Sequence[Sequence[int]], steps: Sequence[int],
                    dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """:func:`retinaface_ext.priors.prior_boxes` for a height and width that may be
    symbolic (torch.export's sizes): the same values (float64, rounded once) and order,
    computed with tensor operations instead of Python arithmetic on the sizes."""
    levels = []
    for sizes, step in zip(min_sizes, steps):
        rows, cols = (height + step - 1) // step, (width + step - 1) // step
        cy = (torch.arange(rows, dtype=torch.float64, device=device) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64, device=device) + 0.5) * step / width
        size = torch.tensor([float(s) for s in sizes], dtype=torch.float64, device=device)
        sw, sh = size / width, size / height
        shape = (rows, cols, len(sizes))
        levels.append(torch.stack([cx[None, :, None].expand(shape), cy[:, None, None].expand(shape),
                                   sw[None, None, :].expand(shape), sh[None, None, :].expand(shape)], -1)
                      .reshape(-1, 4))
    return torch.cat(levels).to(dtype)


class DetectionGraph(nn.Module):
    """Faces from raw images in one module: ``images [B, 3, H, W]`` float BGR in 0..255
    (the mean is subtracted here) -> ``boxes [K, 4]`` x1, y1, x2, y2 in the input's
    pixels, ``scores [K]``, ``landmarks [K, 5, 2]``, ``image_index [K]`` (int64), by
    image, each image best first.

    The Detector's semantics for one batch of equally sized images: face score
    sigmoid(face - background), the ``top_k`` best priors per image, NMS per image over
    those scoring above ``confidence_threshold``, at most ``keep_top_k`` kept.
    """

    def __init__(self, network: InferenceRetinaFace, confidence_threshold: float = 0.02,
                 nms_threshold: float = 0.4, top_k: int = 5000, keep_top_k: int = 750):
        super().__init__()
        self.network = network
        self.config = network.config
        self.confidence_threshold, self.nms_threshold = float(confidence_threshold), float(nms_threshold)
        self.top_k, self.keep_top_k = int(top_k), int(keep_top_k)
        self.register_buffer("mean", torch.tensor(MEAN_BGR).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, logits, landmarks = self.network(images - self.mean)
        height, width = images.shape[2], images.shape[3]
        priors = symbolic_priors(height, width, self.config.min_sizes, self.config.steps, loc.dtype, loc.device)
        scale = torch.stack([torch.full((), width), torch.full((), height)]).to(loc.dtype)
        boxes = reference.decode(loc, priors, self.config.variances) * scale.repeat(2)
        points = reference.decode_landm(landmarks, priors, self.config.variances) * scale.repeat(5)
        face = torch.sigmoid(logits[..., 1] - logits[..., 0])
        scores, order = face.topk(torch.sym_min(self.top_k, face.shape[1]), dim=1)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        points = points.gather(1, order[..., None].expand(-1, -1, 10))
        selected = nms_per_image(boxes, scores, self.keep_top_k, self.nms_threshold, self.confidence_threshold)
        image, index = selected[:, 0], selected[:, 1]
        return boxes[image, index], scores[image, index], points[image, index].reshape(-1, 5, 2), image
