"""The Detector: images in, faces with five landmarks out.

Pre-processing is Pytorch_Retinaface's (BGR minus (104, 117, 123), optional WIDER FACE
style resizing); differently sized images share one padded forward; decoding, the score
filter and NMS run on our kernels, on the device of the network.
"""

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import ops
from .images import MAX_PIXELS, ImageLike, resize_factor, to_bgr_tensor
from .models import InferenceRetinaFace, PaddingMask, RetinaFace, config_for
from .priors import prior_boxes

MEAN_BGR = (104.0, 117.0, 123.0)
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Detections:
    """The faces found in one image, in decreasing score order, in the image's pixels.

    ``boxes [K, 4]`` x1, y1, x2, y2; ``scores [K]``; ``landmarks [K, 5, 2]`` (x, y) of the
    left eye, right eye, nose, left and right mouth corners (as seen in the image).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return self.scores.shape[0]

    def to(self, device) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device))

    def above(self, threshold: float) -> "Detections":
        """Only the detections with score >= ``threshold``."""
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])

    def to_list(self) -> List[dict]:
        """JSON-ready: one dict per face with ``box``, ``score`` and ``landmarks``."""
        boxes, scores, landmarks = (t.detach().cpu().tolist() for t in (self.boxes, self.scores, self.landmarks))
        return [{"box": box, "score": score, "landmarks": dict(zip(LANDMARK_NAMES, points))}
                for box, score, points in zip(boxes, scores, landmarks)]


class Detector:
    """A RetinaFace face detector.

    Args:
        weights_or_model: a Pytorch_Retinaface checkpoint (path or state dict; the
            backbone is read from its keys) or a :class:`~retinaface_ext.models.RetinaFace`
            (copied, so the original stays trainable). The network runs as an
            :class:`~retinaface_ext.models.InferenceRetinaFace`.
        backbone: insist on ``"mobilenet0.25"`` or ``"resnet50"`` (a checkpoint of the
            other kind is an error).
        device: where to run; default the model's device for a model, else CUDA when
            available.
        confidence_threshold: candidates need a face score above this (0.02).
        nms_threshold: IoU above which NMS drops the lower-scored box (0.4).
        top_k: candidates per image kept for NMS, best first (5000).
        keep_top_k: detections per image kept after NMS (750).
        target_size, max_size: resize each image so its short side is ``target_size``
            unless its long side would exceed ``max_size`` (WIDER FACE testing: 1600,
            2150). None keeps the original size (the default).
        fold_batchnorm: fold BatchNorm into the convolutions (same results, faster).
        channels_last: run the network in channels-last memory format (faster on CPU).
        batch_size: images per forward pass in :meth:`detect`.
    """

    def __init__(self, weights_or_model: Union[str, os.PathLike, dict, RetinaFace],
                 backbone: Optional[str] = None, device=None, confidence_threshold: float = 0.02,
                 nms_threshold: float = 0.4, top_k: int = 5000, keep_top_k: int = 750,
                 target_size: Optional[int] = None, max_size: Optional[int] = None,
                 fold_batchnorm: bool = True, channels_last: bool = True, batch_size: int = 8):
        if isinstance(weights_or_model, torch.nn.Module):
            if not isinstance(weights_or_model, RetinaFace):
                raise TypeError(f"weights_or_model: expected a RetinaFace or a checkpoint, "
                                f"got {type(weights_or_model).__name__}")
            model = weights_or_model
            if device is None:
                device = next(model.parameters()).device
        else:
            model = RetinaFace.from_checkpoint(weights_or_model, backbone=backbone)
        if backbone is not None and model.config.backbone != config_for(backbone).backbone:
            raise ValueError(f"backbone={backbone!r} but the model is {model.config.backbone}")
        for name, value in (("top_k", top_k), ("keep_top_k", keep_top_k), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        model = InferenceRetinaFace(model, fold_batchnorm, channels_last).to(self.device)
        self.model, self.config = model, model.config
        self.confidence_threshold, self.nms_threshold = float(confidence_threshold), float(nms_threshold)
        self.top_k, self.keep_top_k, self.batch_size = int(top_k), int(keep_top_k), int(batch_size)
        self.target_size, self.max_size = target_size, max_size
        self.channels_last = channels_last
        self._mean = torch.tensor(MEAN_BGR, device=self.device).reshape(3, 1, 1)

    def __call__(self, images):
        return self.detect(images)

    @torch.inference_mode()
    def detect(self, images: Union[ImageLike, Sequence[ImageLike]]) -> Union[Detections, List[Detections]]:
        """Detect faces in one image (returns :class:`Detections`) or in a list of images
        (returns a list). Images are paths, OpenCV BGR arrays ``[H, W, 3]`` or BGR tensors
        ``[3, H, W]`` (values 0..255); a ``[B, 3, H, W]`` tensor is a list of B images."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.dim() == 4)
        batch = [images] if single else list(images)
        results = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            prepared = [self._prepare(image, f"images[{start + i}]" if not single else "image")
                        for i, image in enumerate(chunk)]
            results.extend(self._detect_prepared(prepared))
        return results[0] if single else results

    def _prepare(self, image, name) -> Tuple[torch.Tensor, float]:
        """The network input of one image (``[3, h, w]`` float, mean subtracted) and its scale."""
        tensor = to_bgr_tensor(image, name, self.device)
        height, width = tensor.shape[-2:]
        factor = resize_factor(height, width, self.target_size, self.max_size)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        if size[0] * size[1] > MAX_PIXELS:
            raise ValueError(f"{name}: {size[0]}x{size[1]} pixels is more than this detector takes "
                             f"({MAX_PIXELS}); pass max_size to shrink large images")
        tensor = self._subtract_mean(tensor)
        if factor != 1.0:
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        return tensor, factor

    def _subtract_mean(self, image: torch.Tensor) -> torch.Tensor:
        """Float32 ``image - mean`` in one pass. For an HWC array seen as ``[3, H, W]`` the
        mean is laid along whole rows, so that the loop runs over rows, not triples."""
        _, height, width = image.shape
        if image.stride() == (1, 3 * width, 3):
            rows = image.permute(1, 2, 0).reshape(height, 3 * width)
            centred = torch.sub(rows, self._mean.reshape(1, 3).repeat(1, width))
            return centred.to(torch.float32).view(height, width, 3).permute(2, 0, 1)
        return torch.sub(image, self._mean).to(torch.float32)

    def _detect_prepared(self, prepared) -> List[Detections]:
        sizes = [tuple(tensor.shape[-2:]) for tensor, _ in prepared]
        canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if len(prepared) == 1:
            inputs = prepared[0][0][None].contiguous(memory_format=memory_format)
        else:
            inputs = torch.zeros(len(prepared), 3, *canvas, device=self.device).contiguous(memory_format=memory_format)
            for slot, (tensor, _) in zip(inputs, prepared):
                slot[:, : tensor.shape[1], : tensor.shape[2]] = tensor
        padding_mask = None if all(size == canvas for size in sizes) else PaddingMask(sizes, canvas)
        loc, logits, landmarks = self.model(inputs, padding_mask)
        factors = [factor for _, factor in prepared]
        return self.postprocess(loc, logits, landmarks, canvas, sizes, factors)

    def postprocess(self, loc, logits, landmarks, canvas, sizes=None, factors=None) -> List[Detections]:
        """Detections per image from the network outputs of a batch whose images were
        ``sizes`` (default: all the canvas) inside ``canvas`` (H, W), resized by ``factors``."""
        batch = loc.shape[0]
        sizes = sizes or [tuple(canvas)] * batch
        priors = prior_boxes(canvas, self.config.min_sizes, self.config.steps, device=loc.device, dtype=loc.dtype)
        # The face probability of the two-class softmax, sigmoid(face - background) being
        # the same function; softmax over a dimension of 2 costs 25x more on the CPU.
        face = torch.sigmoid(logits[..., 1] - logits[..., 0])
        if any(tuple(size) != tuple(canvas) for size in sizes):
            face = face * inside_priors(self.config, sizes, canvas, loc.device)
        conf = torch.stack([1 - face, face], dim=-1)
        boxes, scores, points, image_index, _ = ops.decode_detections(
            loc, conf, landmarks, priors, self.config.variances, self.confidence_threshold)
        height, width = canvas
        boxes = boxes * torch.tensor([width, height] * 2, device=boxes.device, dtype=boxes.dtype)
        points = points * torch.tensor([width, height] * 5, device=boxes.device, dtype=boxes.dtype)
        if factors is not None and any(f != 1.0 for f in factors):
            factor = torch.tensor(factors, device=boxes.device, dtype=boxes.dtype)[image_index, None]
            boxes, points = boxes / factor, points / factor
        if boxes.shape[0] > self.top_k:
            best = _top_k_per_image(scores, image_index, batch, self.top_k)
            boxes, scores, points, image_index = boxes[best], scores[best], points[best], image_index[best]
        keep = ops.batched_nms(boxes, scores, image_index, self.nms_threshold)
        keep = keep[torch.argsort(image_index[keep], stable=True)]  # by image, each by score
        counts = torch.bincount(image_index[keep], minlength=batch).tolist()
        results = []
        for indices in torch.split(keep, counts):
            indices = indices[: self.keep_top_k]
            results.append(Detections(boxes[indices], scores[indices], points[indices].reshape(-1, 5, 2)))
        return results


def inside_priors(config, sizes, canvas, device=None) -> torch.Tensor:
    """``[B, P]`` float: 1 where a prior of the canvas lies on the grid of image b (of
    size ``sizes[b]``), 0 in its padding. The kept priors of an image are, in order, the
    priors it has alone."""
    masks = []
    for height, width in sizes:
        levels = []
        for step, min_sizes in zip(config.steps, config.min_sizes):
            rows, cols = math.ceil(canvas[0] / step), math.ceil(canvas[1] / step)
            inside = torch.zeros(rows, cols, len(min_sizes), device=device)
            inside[: math.ceil(height / step), : math.ceil(width / step)] = 1
            levels.append(inside.flatten())
        masks.append(torch.cat(levels))
    return torch.stack(masks)


def _top_k_per_image(scores, image_index, batch, k) -> torch.Tensor:
    """Indices of the ``k`` best candidates of every image."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(image_index[order], stable=True)]
    counts = torch.bincount(image_index, minlength=batch)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.shape[0], device=order.device) - starts[image_index[order]]
    return order[rank < k]
