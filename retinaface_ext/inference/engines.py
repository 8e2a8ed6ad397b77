"""What runs the network for the Detector: one small class per engine behind the
:class:`Engine` protocol, and :func:`make_engine`, which picks one for what the user
passed (a model, a checkpoint, an ``.onnx`` or ``.pt2`` file) and owns the caching of
exported networks (:mod:`.onnx_network`, :func:`cached_package`).
"""

import os
from typing import Optional, Protocol, Tuple

import torch

from ..devices import resolve_device
from ..models import InferenceRetinaFace, RetinaFace, config_for
from ..models.checkpoint import check_finite
from ..models.config import RetinaFaceConfig
from .postprocess import compile_stage

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
ENGINES = ("torch", "onnxruntime", "aoti")


class Engine(Protocol):
    """Called as ``engine(images, padding_mask) -> loc, logits, landm`` (the head
    outputs). Says its ``name``, where it runs (``device``), which preset its network has
    (``config``), the memory layout it reads (``channels_last``), whether images of
    different sizes may share a pass (``pads``: a padding mask zeroes the padding at
    every layer) and whether its post-processing is compiled (``compiled``)."""

    name: str
    device: torch.device
    config: RetinaFaceConfig
    channels_last: bool
    pads: bool
    compiled: bool
    network: object

    def __call__(self, images: torch.Tensor, padding_mask=None) -> Outputs: ...


def make_engine(
    weights_or_model,
    engine: Optional[str] = None,
    backbone: Optional[str] = None,
    device=None,
    fold_batchnorm: bool = True,
    channels_last: bool = True,
    half: bool = False,
    compile: bool = False,
    trust_package: bool = False,
) -> Engine:
    """The engine for ``weights_or_model`` (see :class:`~retinaface_ext.Detector`'s
    arguments): an ``.onnx`` file runs on onnxruntime, a ``.pt2`` package on aoti, a
    model or checkpoint on ``engine`` (default torch; onnxruntime and aoti export it once
    into the cache)."""
    suffix = (
        os.path.splitext(os.fspath(weights_or_model))[1].lower()
        if isinstance(weights_or_model, (str, os.PathLike))
        else ""
    )
    file_engine = {".onnx": "onnxruntime", ".pt2": "aoti"}.get(suffix)
    engine = (file_engine or "torch") if engine is None else engine
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if file_engine is not None and engine != file_engine:
        kind = {".onnx": "an ONNX file", ".pt2": "an AOTInductor package"}[suffix]
        raise ValueError(f"{os.fspath(weights_or_model)}: {kind} runs with engine={file_engine!r}")
    if engine == "torch":
        model, device = _load_model(weights_or_model, backbone, device)
        return TorchEngine(model, resolve_device(device), fold_batchnorm, channels_last, bool(half), bool(compile))
    if half or compile:
        raise ValueError(f"half and compile apply to engine='torch'; {engine} runs the float32 graph")
    source = weights_or_model if file_engine else _load_model(weights_or_model, backbone, device)[0]
    if engine == "onnxruntime":
        config = config_for(backbone or "mobilenet0.25") if file_engine else source.config
        return OnnxRuntimeEngine(source, config, device)
    return AotiEngine(source, device, backbone, trust_package)


def _load_model(weights_or_model, backbone, device):
    if isinstance(weights_or_model, torch.nn.Module):
        if not isinstance(weights_or_model, RetinaFace):
            raise TypeError(
                f"weights_or_model: expected a RetinaFace or a checkpoint, got {type(weights_or_model).__name__}"
            )
        model = weights_or_model
        check_finite(model.state_dict(), "weights_or_model")
        if device is None:
            device = next(model.parameters()).device
    else:
        model = RetinaFace.from_checkpoint(weights_or_model, backbone=backbone)
    if backbone is not None and model.config.backbone != config_for(backbone).backbone:
        raise ValueError(f"backbone={backbone!r} but the model is {model.config.backbone}")
    return model, device


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
    into the cache (tens of seconds the first time). Runs where it was compiled for.
    A file this installation did not build needs ``trust=True`` (see
    :func:`retinaface_ext.export.load_pt2`); ``backbone``, when given, must be the
    package's."""

    name, pads, channels_last, half, compiled = "aoti", False, False, False, False

    def __init__(self, source, device=None, backbone: Optional[str] = None, trust: bool = False):
        from ..export.pt2 import MIN_SIDE
        from ..export.pt2_files import load_pt2, read_metadata

        self.device = resolve_device(device)
        index = self.device.index if self.device.index is not None else -1
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            self.config = _network_package_config(path, read_metadata(path), backbone)  # before it runs
            self.network, _ = load_pt2(path, index, trust)
        else:
            path, (self.network, metadata) = cached_package(source, self.device.type, index)
            self.config = _network_package_config(path, metadata, backbone)
        self.path, self.min_side = path, MIN_SIDE

    def __call__(self, images: torch.Tensor, padding_mask: Optional[object] = None) -> Outputs:
        if min(images.shape[-2:]) < self.min_side:
            raise ValueError(
                f"engine='aoti': the package takes images of at least {self.min_side} x {self.min_side} pixels, "
                f"got {images.shape[-2]} x {images.shape[-1]}"
            )
        return tuple(self.network(images.contiguous()))


def _network_package_config(path: str, metadata: dict, backbone: Optional[str]) -> RetinaFaceConfig:
    """The preset of a network package, from its metadata; ValueError naming the file for
    a package with the post-processing, or of another backbone than ``backbone``."""
    from ..images import display_path

    shown = display_path(path)
    if metadata.get("retinaface_ext.postprocess") != "0":
        raise ValueError(
            f"{shown}: this package holds the post-processing too; the Detector runs a network package "
            "(to_pt2(..., postprocess=False)); call the package directly for its detections"
        )
    found = metadata.get("retinaface_ext.backbone")
    if found not in ("mobilenet0.25", "resnet50"):
        raise ValueError(f"{shown}: the package names no backbone this version knows ({found!r})")
    if backbone is not None and config_for(backbone).backbone != found:
        raise ValueError(f"backbone={backbone!r}, but {shown} holds a {found} network")
    return config_for(found)


def cached_package(model: RetinaFace, device: str, device_index: int = -1):
    """The network of ``model`` compiled into ``<cache>/pt2/<digest>-<device>.pt2`` once per
    weights, device, torch and retinaface_ext version, beside the file's SHA-256 taken when
    it was built (``.sha256``); returns (path, load_pt2's result). An entry whose bytes no
    longer match (cut short, replaced) or that does not load is built again."""
    import hashlib

    from .._version import __version__
    from ..export.pt2 import to_pt2
    from ..export.pt2_files import file_digest, load_pt2
    from ..files import atomic_write_text, cache_root
    from .onnx_network import model_digest

    key = hashlib.sha256(f"{model_digest(model)}:{torch.__version__}:{__version__}".encode()).hexdigest()[:32]
    path = os.path.join(cache_root(), "pt2", f"{key}-{device}.pt2")
    recorded = path + ".sha256"
    if os.path.isfile(path) and os.path.isfile(recorded):
        try:
            with open(recorded, encoding="ascii") as handle:
                if handle.read().strip() == file_digest(path):
                    return path, load_pt2(path, device_index, trust=True)
        except (OSError, ValueError, UnicodeDecodeError):
            pass  # built again below
    to_pt2(model, path, device=device, postprocess=False, check=False)
    atomic_write_text(recorded, file_digest(path) + "\n")
    return path, load_pt2(path, device_index, trust=True)
