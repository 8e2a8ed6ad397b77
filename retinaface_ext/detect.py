"""The Detector: images in, faces with five landmarks out.

Pre-processing is Pytorch_Retinaface's (BGR minus (104, 117, 123), optional WIDER FACE
style resizing); images of similar sizes share one padded forward; decoding, the score
filter and NMS run on our kernels, on the device of the network.
"""

import os
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import _extension, ops
from .detections import LANDMARK_NAMES, Detections, Face  # noqa: F401 (re-exported)
from .images import (MAX_DECODED_PIXELS, MAX_PIXELS, ImageLike, check_size, image_file_size, read_image,
                     resize_factor, resized_shape, to_bgr_tensor)
from .models import InferenceRetinaFace, PaddingMask, RetinaFace, config_for
from .models.checkpoint import check_finite
from .postprocess import check_counts, compile_stage, inside_priors
from .priors import cached_prior_boxes

MEAN_BGR = (104.0, 117.0, 123.0)
ENGINES = ("torch", "onnxruntime")
#: Images share a padded forward pass only while the pass costs at most this many times
#: their own pixels; the rest run in other passes (groups of similar sizes).
MAX_PADDING_FACTOR = 2.0


class Prepared(NamedTuple):
    tensor: torch.Tensor  # [3, h, w] network input (mean subtracted, resized)
    factor: float  # resize factor
    image_size: Tuple[int, int]  # (height, width) of the original image


def resolve_device(device) -> torch.device:
    """``device`` as a torch.device that can run here, or a ValueError saying why not."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is not a CUDA build" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {str(device)!r}: CUDA is not available here ({why})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA devices are visible")
        if _extension.is_available() and "cuda" not in _extension.compiled_backends():
            raise ValueError(f"device {str(device)!r}: retinaface_ext was built without CUDA kernels")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def padding_groups(sizes: Sequence[Tuple[int, int]], max_images: int,
                   max_padding: float = MAX_PADDING_FACTOR) -> List[List[int]]:
    """Indices of ``sizes`` (h, w) in groups that share a padded canvas: at most
    ``max_images`` per group, and a group's canvas pixels times its images at most
    ``max_padding`` times their own pixels. First fit, largest images first."""
    groups: List[List[int]] = []
    canvases: List[Tuple[int, int, int]] = []  # height, width and the images' own pixels, per group
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1]):
        h, w = sizes[i]
        for g, (gh, gw, pixels) in enumerate(canvases):
            height, width = max(gh, h), max(gw, w)
            if len(groups[g]) < max_images and height * width * (len(groups[g]) + 1) <= max_padding * (pixels + h * w):
                groups[g].append(i)
                canvases[g] = (height, width, pixels + h * w)
                break
        else:
            groups.append([i])
            canvases.append((h, w, h * w))
    return groups


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
        confidence_threshold: candidates need a face score above this (0.02; in [0, 1]).
        nms_threshold: IoU above which NMS drops the lower-scored box (0.4; in [0, 1]).
        top_k: candidates per image kept for NMS, best first (5000).
        keep_top_k: detections per image kept after NMS (750).
        target_size, max_size: resize each image so its short side is ``target_size``
            unless its long side would exceed ``max_size`` (WIDER FACE testing: 1600,
            2150); either alone works too. None keeps the original size (the default).
        fold_batchnorm: fold BatchNorm into the convolutions (same results, faster).
        channels_last: run the network in channels-last memory format (faster on CPU).
        batch_size: images per forward pass in :meth:`detect`; images share a pass only
            when the padding costs at most ``MAX_PADDING_FACTOR`` times their pixels.
        clip_boxes: clip the boxes to the image (default False, as Pytorch_Retinaface).
        engine: ``"torch"`` (the default) or ``"onnxruntime"``: the network exported to
            ONNX (once per weights, into the cache; see :mod:`retinaface_ext.onnx_engine`)
            and run by onnxruntime on the CPU, with this Detector's pre- and
            post-processing around it. Only equally sized images share a forward pass
            there. An ``.onnx`` file (``to_onnx(..., postprocess=False)``) as
            ``weights_or_model`` selects it too (pass ``backbone`` for a ResNet-50 one:
            it names the preset; both presets have the same priors).
        half: run the network in float16 (CUDA only); the post-processing stays float32.
        compile: ``torch.compile`` the network and the post-processing (torch engine).
    """

    def __init__(self, weights_or_model: Union[str, os.PathLike, dict, RetinaFace],
                 backbone: Optional[str] = None, device=None, confidence_threshold: float = 0.02,
                 nms_threshold: float = 0.4, top_k: int = 5000, keep_top_k: int = 750,
                 target_size: Optional[float] = None, max_size: Optional[float] = None,
                 fold_batchnorm: bool = True, channels_last: bool = True, batch_size: int = 8,
                 clip_boxes: bool = False, engine: Optional[str] = None, half: bool = False,
                 compile: bool = False):
        self.top_k, self.keep_top_k = _count(top_k, "top_k"), _count(keep_top_k, "keep_top_k")
        self.batch_size = _count(batch_size, "batch_size")
        self.confidence_threshold = _fraction(confidence_threshold, "confidence_threshold")
        self.nms_threshold = _fraction(nms_threshold, "nms_threshold")
        self.target_size, self.max_size = check_size(target_size, "target_size"), check_size(max_size, "max_size")
        onnx_file = isinstance(weights_or_model, (str, os.PathLike)) and \
            os.fspath(weights_or_model).lower().endswith(".onnx")
        self.engine = engine = ("onnxruntime" if onnx_file else "torch") if engine is None else engine
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "torch" and onnx_file:
            raise ValueError(f"{os.fspath(weights_or_model)}: an ONNX file runs with engine='onnxruntime'")
        self.half, self.compiled = bool(half), bool(compile)
        if engine == "onnxruntime":
            if self.half or self.compiled:
                raise ValueError("half and compile apply to engine='torch'; onnxruntime runs the float32 graph")
            self._init_onnxruntime(weights_or_model, onnx_file, backbone, device)
        else:
            self._init_torch(weights_or_model, backbone, device, fold_batchnorm, channels_last)
        self.clip_boxes = bool(clip_boxes)
        self._mean = torch.tensor(MEAN_BGR, device=self.device).reshape(3, 1, 1)
        self._detect_faces = ops.detect_faces
        if self.compiled:
            self.model, self._detect_faces = compile_stage(self.model), compile_stage(ops.detect_faces)

    def _load_model(self, weights_or_model, backbone, device):
        if isinstance(weights_or_model, torch.nn.Module):
            if not isinstance(weights_or_model, RetinaFace):
                raise TypeError(f"weights_or_model: expected a RetinaFace or a checkpoint, "
                                f"got {type(weights_or_model).__name__}")
            model = weights_or_model
            check_finite(model.state_dict(), "weights_or_model")
            if device is None:
                device = next(model.parameters()).device
        else:
            model = RetinaFace.from_checkpoint(weights_or_model, backbone=backbone)
        if backbone is not None and model.config.backbone != config_for(backbone).backbone:
            raise ValueError(f"backbone={backbone!r} but the model is {model.config.backbone}")
        return model, device

    def _init_torch(self, weights_or_model, backbone, device, fold_batchnorm, channels_last):
        model, device = self._load_model(weights_or_model, backbone, device)
        self.device = resolve_device(device)
        if self.half and self.device.type != "cuda":
            raise ValueError(f"half=True needs a CUDA device, got {self.device}")
        model = InferenceRetinaFace(model, fold_batchnorm, channels_last).to(self.device)
        self.model = model.half() if self.half else model
        self.config, self.channels_last = model.config, channels_last

    def _init_onnxruntime(self, weights_or_model, onnx_file, backbone, device):
        from .onnx_engine import OnnxRuntimeNetwork, cached_network, import_onnxruntime

        self.device = resolve_device("cpu" if device is None else device)
        if self.device.type != "cpu":
            raise ValueError(f"engine='onnxruntime' runs on the CPU, got device {self.device}")
        import_onnxruntime()
        if onnx_file:
            self.config = config_for(backbone or "mobilenet0.25")
            self.model = OnnxRuntimeNetwork(weights_or_model)
        else:
            model, _ = self._load_model(weights_or_model, backbone, device)
            self.config, self.model = model.config, cached_network(model)
        self.channels_last = False

    def __call__(self, images, color: str = "bgr", names: Optional[Sequence[str]] = None):
        return self.detect(images, color, names)

    @torch.inference_mode()
    def detect(self, images: Union[ImageLike, Sequence[ImageLike]], color: str = "bgr",
               names: Optional[Sequence[str]] = None) -> Union[Detections, List[Detections]]:
        """Detect faces in one image (returns :class:`Detections`) or in a list of images
        (returns a list).

        Images are paths, numpy arrays ``[H, W, C]``, tensors ``[C, H, W]`` (values
        0..255) or PIL images; a ``[B, 3, H, W]`` tensor is a list of B images. Arrays
        and tensors are BGR, as OpenCV reads them; pass ``color="rgb"`` for RGB ones (from
        PIL, ``torchvision.io.decode_image``, matplotlib). PIL images are always RGB.
        ``names`` (one per image; a string for one image) is what errors call the images,
        such as the files they came from; by default ``image`` or ``images[i]``.
        """
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.dim() == 4)
        batch = [images] if single else list(images)
        if names is None:
            names = ["image"] if single else [f"images[{i}]" for i in range(len(batch))]
        elif single and isinstance(names, str):
            names = [names]
        elif isinstance(names, str) or len(names) != len(batch):
            raise ValueError(f"names must hold one name per image ({len(batch)}), got {names!r}")
        results = []
        for start in range(0, len(batch), self.batch_size):
            chunk, chunk_names = batch[start:start + self.batch_size], names[start:start + self.batch_size]
            prepared = [self.prepare(image, name, color) for image, name in zip(chunk, chunk_names)]
            results.extend(self._detect_prepared(prepared, chunk_names))
        return results[0] if single else results

    def read_image(self, path: Union[str, os.PathLike], name: Optional[str] = None) -> np.ndarray:
        """An image file as OpenCV reads it (BGR), refused from its header, before
        decoding, when this detector would refuse its size."""
        size = image_file_size(path)
        if size is not None:
            self._check_input_size(*size, name or os.fspath(path))
        return read_image(path, MAX_DECODED_PIXELS)

    def _check_input_size(self, height: int, width: int, name: str) -> Tuple[float, Tuple[int, int]]:
        if self.target_size is None and self.max_size is None:
            factor, size = 1.0, (int(height), int(width))
        else:
            factor = resize_factor(height, width, self.target_size, self.max_size)
            size = resized_shape(height, width, factor)
        if size[0] * size[1] > MAX_PIXELS:
            raise ValueError(f"{name}: {size[0]}x{size[1]} pixels is more than this detector takes "
                             f"({MAX_PIXELS}); pass max_size to shrink large images")
        return factor, size

    def prepare(self, image: ImageLike, name: str = "image", color: str = "bgr") -> Prepared:
        """The pre-processing of one image, as :meth:`detect` does it: its network input
        (``[3, h, w]`` float32, mean subtracted, resized), the resize factor and the
        image's own size. ``name`` is what errors call it."""
        if isinstance(image, (str, os.PathLike)):
            image = self.read_image(image, f"{name} ({os.fspath(image)})")
        tensor = to_bgr_tensor(image, name, self.device, color)
        height, width = tensor.shape[-2:]
        factor, size = self._check_input_size(height, width, name)
        tensor = self._subtract_mean(tensor)
        if factor != 1.0:
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        return Prepared(tensor, factor, (int(height), int(width)))

    def network_input(self, image: ImageLike, color: str = "bgr") -> torch.Tensor:
        """One image's batch ``[1, 3, h, w]`` as the network takes it (its memory layout
        included): what ``self.model`` runs on, for timing the stages apart."""
        tensor = self.prepare(image, color=color).tensor[None]
        return tensor.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _subtract_mean(self, image: torch.Tensor) -> torch.Tensor:
        """Float32 ``image - mean`` in one pass, in the layout the network reads: for an
        HWC array seen as ``[3, H, W]``, channels-last (the mean laid along whole rows, so
        that the loop runs over rows, not triples) or, for a network that reads NCHW
        (the onnxruntime engine), written straight into planes by
        :func:`~retinaface_ext.ops.image_planes`, serially: torch's parallel loops here
        measurably slowed the onnxruntime forward right after them (shared cores)."""
        _, height, width = image.shape
        if not self.channels_last:
            if image.stride() == (1, 3 * width, 3):  # HWC memory: our one-pass kernel, on this thread
                return ops.image_planes(image.permute(1, 2, 0), MEAN_BGR)
            return torch.sub(image, self._mean).to(torch.float32).contiguous()
        if image.stride() == (1, 3 * width, 3):
            rows = image.permute(1, 2, 0).reshape(height, 3 * width)
            centred = torch.sub(rows, self._mean.reshape(1, 3).repeat(1, width))
            return centred.to(torch.float32).view(height, width, 3).permute(2, 0, 1)
        return torch.sub(image, self._mean).to(torch.float32)

    def _detect_prepared(self, prepared: Sequence[Prepared], names: Sequence[str]) -> List[Detections]:
        results: List[Optional[Detections]] = [None] * len(prepared)
        sizes = [tuple(p.tensor.shape[-2:]) for p in prepared]
        max_padding = 1.0 if self.engine == "onnxruntime" else MAX_PADDING_FACTOR  # no padding mask there
        for group in padding_groups(sizes, self.batch_size, max_padding):
            for i, detections in zip(group, self._forward_group([prepared[i] for i in group], [names[i] for i in group])):
                results[i] = detections
        return results

    def _forward_group(self, prepared: Sequence[Prepared], names: Sequence[str]) -> List[Detections]:
        sizes = [tuple(p.tensor.shape[-2:]) for p in prepared]
        canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if len(prepared) == 1:
            inputs = prepared[0].tensor[None].contiguous(memory_format=memory_format)
        else:
            inputs = torch.zeros(len(prepared), 3, *canvas, device=self.device).contiguous(memory_format=memory_format)
            for slot, p in zip(inputs, prepared):
                slot[:, : p.tensor.shape[1], : p.tensor.shape[2]] = p.tensor
        padding_mask = None if all(size == canvas for size in sizes) else PaddingMask(sizes, canvas)
        outputs = self.model(inputs.half() if self.half else inputs, padding_mask)
        return self.postprocess(*outputs, canvas, sizes, [p.factor for p in prepared], names,
                                [p.image_size for p in prepared])

    def postprocess(self, loc, logits, landmarks, canvas, sizes=None, factors=None, names=None,
                    image_sizes=None) -> List[Detections]:
        """Detections per image from the network outputs of a batch whose images were
        ``sizes`` (default: all the canvas) inside ``canvas`` (H, W), resized by ``factors``
        from ``image_sizes``; ``names`` name them in errors."""
        batch = loc.shape[0]
        sizes = sizes or [tuple(canvas)] * batch
        names = names or [f"images[{b}]" for b in range(batch)]
        if loc.dtype in (torch.float16, torch.bfloat16):  # a half network: post-processing in float32
            loc, logits, landmarks = loc.float(), logits.float(), landmarks.float()
        priors = cached_prior_boxes(canvas, self.config.min_sizes, self.config.steps, device=loc.device,
                                    dtype=loc.dtype)
        if loc.shape[1] != len(priors):  # a network of another layout (an .onnx file of another model)
            raise ValueError(f"the network gives {loc.shape[1]} rows for a {canvas[0]}x{canvas[1]} canvas; the "
                             f"{self.config.backbone} preset has {len(priors)} priors there")
        inside = None
        if any(tuple(size) != tuple(canvas) for size in sizes):
            inside = inside_priors(self.config, sizes, canvas, loc.device)
        factor = None
        if factors is not None and any(f != 1.0 for f in factors):
            factor = torch.tensor(factors, device=loc.device, dtype=loc.dtype)
        boxes, scores, points, counts = self._detect_faces(
            loc, logits, landmarks, priors, tuple(canvas), inside, factor, self.config.variances,
            self.confidence_threshold, self.top_k, self.nms_threshold, self.keep_top_k)
        counts = counts.tolist()
        check_counts(counts, names)
        image_sizes = image_sizes or [tuple(size) for size in sizes]
        results = []
        per_image = zip(boxes.split(counts), scores.split(counts), points.split(counts)) if batch > 1 else \
            [(boxes, scores, points)]
        for (image_boxes, image_scores, image_points), image_size in zip(per_image, image_sizes):
            detections = Detections(image_boxes, image_scores, image_points.reshape(-1, 5, 2), tuple(image_size))
            results.append(detections.clipped() if self.clip_boxes else detections)
        return results
