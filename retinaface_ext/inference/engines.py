"""What runs the network for the Detector: one small class per engine, each called as
``engine(images, padding_mask) -> loc, logits, landm`` (the head outputs).

An engine says where it runs (``device``), which preset its network has (``config``),
the memory layout it reads (``channels_last``) and whether images of different sizes
may share a pass (``pads``: a padding mask zeroes the padding at every layer).
"""

import os
from typing import Optional, Tuple

import torch

from ..devices import resolve_device
from ..models import InferenceRetinaFace, RetinaFace, config_for
from ..models.config import RetinaFaceConfig
from .postprocess import compile_stage

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TorchEngine:
    """The PyTorch network as :class:`~retinaface_ext.models.InferenceRetinaFace` runs it
    (BatchNorm folded, channels-last), on ``device``; ``half`` in float16 (CUDA only; the
    outputs are float32 again), ``compile`` through ``torch.compile``."""

    name, pads = "torch", True

    def __init__(
        self,
        model: RetinaFace,
        device: torch.device,
        fold_batchnorm: bool = True,
        channels_last: bool = True,
        half: bool = False,
        compile: bool = False,
    ):
        if half and device.type != "cuda":
            raise ValueError(f"half=True needs a CUDA device, got {device}")
        network = InferenceRetinaFace(model, fold_batchnorm, channels_last).to(device)
        self.network = (
            compile_stage(network.half() if half else network) if compile else (network.half() if half else network)
        )
        self.device, self.config, self.channels_last = device, network.config, channels_last
        self.half, self.compiled = half, compile

    def __call__(self, images: torch.Tensor, padding_mask=None) -> Outputs:
        outputs = self.network(images.half() if self.half else images, padding_mask)
        return tuple(out.float() for out in outputs) if self.half else outputs


class OnnxRuntimeEngine:
    """The network exported to ONNX and run by onnxruntime on the CPU: an ``.onnx`` file
    (``config`` names its preset), or a RetinaFace exported once into the cache."""

    name, pads, channels_last, half, compiled = "onnxruntime", False, False, False, False

    def __init__(self, source, config: RetinaFaceConfig, device=None):
        from .onnx_network import OnnxRuntimeNetwork, cached_network, import_onnxruntime

        self.device = resolve_device("cpu" if device is None else device)
        if self.device.type != "cpu":
            raise ValueError(f"engine='onnxruntime' runs on the CPU, got device {self.device}")
        import_onnxruntime()
        self.config = config
        self.network = OnnxRuntimeNetwork(source) if isinstance(source, (str, os.PathLike)) else cached_network(source)

    def __call__(self, images: torch.Tensor, padding_mask: Optional[object] = None) -> Outputs:
        return self.network(images, padding_mask)


class AotiEngine:
    """The network as an AOTInductor package (:func:`retinaface_ext.export.to_pt2` with
    ``postprocess=False``): a ``.pt2`` file, or a RetinaFace exported and compiled once
    into the cache (tens of seconds the first time). Runs where it was compiled for."""

    name, pads, channels_last, half, compiled = "aoti", False, False, False, False

    def __init__(self, source, config: RetinaFaceConfig, device=None):
        from ..export.pt2 import MIN_SIDE, load_pt2

        self.device = resolve_device(device)
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
        else:
            path = cached_package(source, self.device.type)
        self.network, metadata = load_pt2(path, self.device.index if self.device.index is not None else -1)
        if metadata.get("retinaface_ext.postprocess") != "0":
            raise ValueError(
                f"{path}: this package holds the post-processing too; the Detector runs a network package "
                "(to_pt2(..., postprocess=False)); call the package directly for its detections"
            )
        self.path, self.min_side = path, MIN_SIDE
        backbone = metadata.get("retinaface_ext.backbone")
        self.config = config if backbone is None or backbone == config.backbone else config_for(backbone)

    def __call__(self, images: torch.Tensor, padding_mask: Optional[object] = None) -> Outputs:
        if min(images.shape[-2:]) < self.min_side:
            raise ValueError(
                f"engine='aoti': the package takes images of at least {self.min_side} x {self.min_side} pixels, "
                f"got {images.shape[-2]} x {images.shape[-1]}"
            )
        return tuple(self.network(images.contiguous()))


def cached_package(model: RetinaFace, device: str) -> str:
    """The network of ``model`` compiled into ``<cache>/pt2/<digest>-<device>.pt2`` once per
    weights, device, torch and retinaface_ext version; returns the path."""
    import hashlib

    from .. import __version__
    from ..export.pt2 import to_pt2
    from ..files import cache_root
    from .onnx_network import model_digest

    key = hashlib.sha256(f"{model_digest(model)}:{torch.__version__}:{__version__}".encode()).hexdigest()[:32]
    path = os.path.join(cache_root(), "pt2", f"{key}-{device}.pt2")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        to_pt2(model, path, device=device, postprocess=False, check=False)
    return path
