"""The Detector: images in, faces with five landmarks out.

Pre-processing (:mod:`.preprocess`) is Pytorch_Retinaface's: BGR minus the model's mean,
optional WIDER FACE style resizing. Images of similar sizes share one padded forward pass
of an engine (:mod:`.engines`: PyTorch or onnxruntime). The post-processing
(:mod:`.postprocess`: decoding, the score filter and NMS) runs on our kernels, on the
device of the network.
"""

import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..images import MAX_PIXELS, ImageLike
from ..models import PaddingMask, RetinaFace
from ..models.config import DetectionSettings, whole_number
from .detections import Detections
from .engines import make_engine
from .levels import Level, LevelSettings, auto_levels, merge, place
from .postprocess import Postprocessing
from .preprocess import Prepared, Preprocessing

#: Images share a padded forward pass only while the pass costs at most this many times
#: their own pixels; the rest run in other passes (groups of similar sizes).
MAX_PADDING_FACTOR = 2.0
#: The network input pixels of one forward pass, all images of the pass together (the
#: padded canvas times the images): what one image may have (MAX_PIXELS). Memory grows
#: with it: about 50 bytes a pixel for MobileNet-0.25 and 200 for ResNet-50 on the CPU.
MAX_PASS_PIXELS = MAX_PIXELS
DEFAULTS = DetectionSettings()


def padding_groups(
    sizes: Sequence[Tuple[int, int]],
    max_images: int,
    max_padding: float = MAX_PADDING_FACTOR,
    max_pixels: Optional[int] = None,
) -> List[List[int]]:
    """Indices of ``sizes`` (h, w) in groups that share a padded canvas: at most
    ``max_images`` per group, a group's canvas pixels times its images at most
    ``max_padding`` times their own pixels and at most ``max_pixels`` (an image larger
    than that alone is a group of its own). First fit, largest images first."""
    groups: List[List[int]] = []
    canvases: List[Tuple[int, int, int]] = []  # height, width and the images' own pixels, per group
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1]):
        h, w = sizes[i]
        for g, (gh, gw, pixels) in enumerate(canvases):
            height, width = max(gh, h), max(gw, w)
            canvas = height * width * (len(groups[g]) + 1)
            if (
                len(groups[g]) < max_images
                and canvas <= max_padding * (pixels + h * w)
                and (max_pixels is None or canvas <= max_pixels)
            ):
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
        score_threshold: candidates need a face score above this (0.02; in [0, 1]).
        nms_threshold: IoU above which NMS drops the lower-scored box (0.4; in [0, 1]).
        top_k: candidates per image kept for NMS, best first (5000).
        keep_top_k: detections per image kept after NMS (750). These four are a
            :class:`~retinaface_ext.models.DetectionSettings` (``self.settings``);
            ``confidence_threshold`` is the old name of ``score_threshold``.
        settings: the four as one :class:`~retinaface_ext.models.DetectionSettings`
            (instead of them).
        target_size, max_size: resize each image so its short side is ``target_size``
            unless its long side would exceed ``max_size`` (WIDER FACE testing: 1600,
            2150); either alone works too. None keeps the original size (the default).
        fold_batchnorm: fold BatchNorm into the convolutions (same results, faster).
        channels_last: run the network in channels-last memory format (faster on CPU).
        batch_size: images per forward pass in :meth:`detect`; images share a pass only
            when the padding costs at most ``MAX_PADDING_FACTOR`` times their pixels.
        max_pass_pixels: network input pixels per forward pass, all its images together
            (``MAX_PASS_PIXELS``, 64M): a larger batch runs as several passes, so that
            memory stays bounded whatever ``batch_size`` asks.
        clip_boxes: clip the boxes to the image (default False, as Pytorch_Retinaface).
        engine: ``"torch"`` (the default) or ``"onnxruntime"``: the network exported to
            ONNX (once per weights, into the cache; see :mod:`retinaface_ext.inference.onnx_network`)
            and run by onnxruntime on the CPU, with this Detector's pre- and
            post-processing around it. Only equally sized images share a forward pass
            there. An ``.onnx`` file (``to_onnx(..., postprocess=False)``) as
            ``weights_or_model`` selects it too (pass ``backbone`` for a ResNet-50 one:
            it names the preset; both presets have the same priors).
            ``"aoti"``: the network as an AOTInductor package (``.pt2``, see
            :func:`retinaface_ext.export.to_pt2`), compiled once per weights into the cache
            (tens of seconds the first time) for this Detector's device; a ``.pt2`` file
            made with ``postprocess=False`` selects it. Only equally sized images share a
            pass; sides must be at least 33 pixels.
        half: run the network in float16 (CUDA only); the post-processing stays float32.
        compile: ``torch.compile`` the network and the post-processing (torch engine).
        trust_package: load a ``.pt2`` package that this installation did not build. A
            package is a program (native code that runs as it loads), so one from
            elsewhere is refused unless you trust its source; see
            :func:`retinaface_ext.export.load_pt2`.
        scales: look at each image at these scales (factors applied after the
            ``target_size`` / ``max_size`` resize) and merge the faces; each scale keeps
            the face sizes it sees well (:data:`~.levels.FACE_SIZES`). ``"auto"``: a first
            look at scale 1, then a second, enlarged, at the region where it found small
            faces, if any (see :mod:`.levels`). Default ``(1.0,)``: one pass.
        flip: look at each level mirrored too (landmarks mirrored back, left and right
            swapped).
        merge: how the faces of the levels become one set: ``"nms"`` (the default) or
            ``"vote"`` (box voting: the score-weighted mean of each group's boxes and
            landmarks, the group's best score). All levels of the images of a call share
            the padded passes; ``batch_size`` counts passes, not images.
    """

    def __init__(
        self,
        weights_or_model: Union[str, os.PathLike, dict, RetinaFace],
        backbone: Optional[str] = None,
        device=None,
        score_threshold: float = DEFAULTS.score_threshold,
        nms_threshold: float = DEFAULTS.nms_threshold,
        top_k: int = DEFAULTS.top_k,
        keep_top_k: int = DEFAULTS.keep_top_k,
        target_size: Optional[float] = None,
        max_size: Optional[float] = None,
        fold_batchnorm: bool = True,
        channels_last: bool = True,
        batch_size: int = 8,
        clip_boxes: bool = False,
        engine: Optional[str] = None,
        half: bool = False,
        compile: bool = False,
        confidence_threshold: Optional[float] = None,
        max_pass_pixels: int = MAX_PASS_PIXELS,
        trust_package: bool = False,
        settings: Optional[DetectionSettings] = None,
        scales: Union[Sequence[float], str] = (1.0,),
        flip: bool = False,
        merge: str = "nms",
    ):
        if confidence_threshold is not None:
            warnings.warn("Detector(confidence_threshold=...) is now score_threshold", DeprecationWarning, stacklevel=2)
            score_threshold = confidence_threshold
        values = DetectionSettings(score_threshold, nms_threshold, top_k, keep_top_k)
        if settings is not None:
            if not isinstance(settings, DetectionSettings):
                raise TypeError(f"settings must be a DetectionSettings, got {type(settings).__name__}")
            if values != DEFAULTS:
                raise ValueError("give settings or score_threshold, nms_threshold, top_k and keep_top_k, not both")
        self.settings = settings or values
        self.levels = LevelSettings(scales, flip, merge)
        self.batch_size = whole_number(batch_size, "batch_size")
        self.max_pass_pixels = whole_number(max_pass_pixels, "max_pass_pixels")
        self.engine = make_engine(
            weights_or_model, engine, backbone, device, fold_batchnorm, channels_last, half, compile, trust_package
        )
        self.device, self.config = self.engine.device, self.engine.config
        self.preprocessing = Preprocessing(
            self.device, self.config.mean_bgr, self.engine.channels_last, target_size, max_size
        )
        self.preprocessing.largest_scale = self.levels.largest_scale
        self.postprocess = Postprocessing(self.config, self.settings, clip_boxes, self.engine.compiled)

    @property
    def model(self):
        """The network the engine runs: ``model(images) -> loc, logits, landm``."""
        return self.engine.network

    def __call__(self, images, color: str = "bgr", names: Optional[Sequence[str]] = None):
        return self.detect(images, color, names)

    @torch.inference_mode()
    def detect(
        self, images: Union[ImageLike, Sequence[ImageLike]], color: str = "bgr", names: Optional[Sequence[str]] = None
    ) -> Union[Detections, List[Detections]]:
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
        if not self.levels.single:
            results = []
            for start in range(0, len(batch), self.batch_size):
                end = start + self.batch_size
                results.extend(self._detect_levels(batch[start:end], names[start:end], color))
            return results[0] if single else results
        results, prepared, chunk_names, pixels = [], [], [], 0
        for image, name in zip(batch, names):
            one = self.preprocessing.prepare(image, name, color)
            size = one.tensor.shape[-2] * one.tensor.shape[-1]
            if prepared and pixels + size > self.max_pass_pixels:
                results.extend(self._detect_prepared(prepared, chunk_names))
                prepared, chunk_names, pixels = [], [], 0
            prepared.append(one)
            chunk_names.append(name)
            pixels += size
            if len(prepared) == self.batch_size:
                results.extend(self._detect_prepared(prepared, chunk_names))
                prepared, chunk_names, pixels = [], [], 0
        if prepared:
            results.extend(self._detect_prepared(prepared, chunk_names))
        return results[0] if single else results

    def pass_pixels(self, height: int, width: int) -> int:
        """The network input pixels of an ``height x width`` image here (after resizing),
        what it takes of a forward pass's ``max_pass_pixels``."""
        size = self.preprocessing.network_size(height, width)[1]
        return size[0] * size[1]

    def detect_video(self, source, batch_size: Optional[int] = None, name: Optional[str] = None):
        """Faces in each frame of a video file, a camera index or a stream address (or an
        opened ``cv2.VideoCapture``): an iterator of :class:`~.video.VideoFrame` (index,
        time in seconds, the BGR frame, its Detections), in order. Frames are decoded
        ahead in a background thread (bounded in bytes) and detected ``batch_size`` at a
        time (default: this detector's). ``name`` is what errors call the source."""
        from .video import detect_video

        return detect_video(self, source, batch_size, name)

    def read_image(self, path: Union[str, os.PathLike], name: Optional[str] = None) -> np.ndarray:
        """An image file as OpenCV reads it (BGR), refused from its header, before
        decoding, when this detector would refuse its size."""
        return self.preprocessing.read_image(path, name)

    def decode_image(self, data: bytes, name: str = "image") -> np.ndarray:
        """Encoded image bytes (a file's content) decoded (BGR) as :meth:`read_image` reads
        a file, refused from their header when this detector would refuse their size."""
        return self.preprocessing.decode_image(data, name)

    def prepare(self, image: ImageLike, name: str = "image", color: str = "bgr") -> Prepared:
        """See :meth:`.Preprocessing.prepare`."""
        return self.preprocessing.prepare(image, name, color)

    def network_input(self, image: ImageLike, color: str = "bgr") -> torch.Tensor:
        """See :meth:`.Preprocessing.network_input`."""
        return self.preprocessing.network_input(image, color)

    def _detect_prepared(self, prepared: Sequence[Prepared], names: Sequence[str]) -> List[Detections]:
        results: List[Optional[Detections]] = [None] * len(prepared)
        sizes = [tuple(p.tensor.shape[-2:]) for p in prepared]
        max_padding = MAX_PADDING_FACTOR if self.engine.pads else 1.0
        for group in padding_groups(sizes, self.batch_size, max_padding, self.max_pass_pixels):
            for i, detections in zip(
                group, self._forward_group([prepared[i] for i in group], [names[i] for i in group])
            ):
                results[i] = detections
        return results

    def _forward_group(self, prepared: Sequence[Prepared], names: Sequence[str]) -> List[Detections]:
        sizes = [tuple(p.tensor.shape[-2:]) for p in prepared]
        canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
        memory_format = torch.channels_last if self.engine.channels_last else torch.contiguous_format
        if len(prepared) == 1:
            inputs = prepared[0].tensor[None].contiguous(memory_format=memory_format)
        else:
            inputs = torch.zeros(len(prepared), 3, *canvas, device=self.device).contiguous(memory_format=memory_format)
            for slot, p in zip(inputs, prepared):
                slot[:, : p.tensor.shape[1], : p.tensor.shape[2]] = p.tensor
        padding_mask = None if all(size == canvas for size in sizes) else PaddingMask(sizes, canvas)
        outputs = self.engine(inputs, padding_mask)
        return self.postprocess(
            *outputs, canvas, sizes, [p.factor for p in prepared], names, [p.image_size for p in prepared]
        )

    def _detect_levels(self, images, names: Sequence[str], color: str) -> List[Detections]:
        """Each image at its levels (all of them through shared passes), merged."""
        sources = [self.preprocessing.source(image, name, color) for image, name in zip(images, names)]
        first = self.levels.first_levels()
        levels = [list(first) for _ in sources]
        found = self._run_levels(sources, levels, names)
        if self.levels.scales == "auto":
            second = []
            for i, source in enumerate(sources):
                unmirrored = place(found[i][0], Level(), source.factor, source.image_size)
                levels[i], extra = auto_levels(first, unmirrored, source.factor, source.image_size, MAX_PIXELS)
                second.append(extra)
            for i, faces in enumerate(self._run_levels(sources, second, names)):
                levels[i].extend(second[i])
                found[i].extend(faces)
        placed = [
            [
                place(faces, level, source.factor * level.scale, source.image_size)
                for faces, level in zip(found[i], levels[i])
            ]
            for i, source in enumerate(sources)
        ]
        if all(len(image_levels) == 1 for image_levels in placed):
            return [image_levels[0] for image_levels in placed]
        return merge(placed, self.levels.merge, self.settings)

    def _run_levels(self, sources, levels, names) -> List[List[Detections]]:
        """The faces of ``levels[i]`` of each image ``sources[i]``, as the network sees them."""
        prepared, owners = [], []
        for i, (source, name) in enumerate(zip(sources, names)):
            for level in levels[i]:
                prepared.append(self.preprocessing.level(source, level, name))
                owners.append(i)
        found: List[List[Detections]] = [[] for _ in sources]
        for i, faces in zip(owners, self._detect_prepared(prepared, [names[i] for i in owners])):
            found[i].append(faces)
        return found
