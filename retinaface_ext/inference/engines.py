"""What runs the network for the Detector: one small class per engine, both called as
``engine(images, padding_mask) -> loc, logits, landm`` (the head outputs).

An engine says where it runs (``device``), which preset its network has (``config``),
the memory layout it reads (``channels_last``) and whether images of different sizes
may share a pass (``pads``: a padding mask zeroes the padding at every layer).
"""

import os
from typing import Optional, Tuple

import torch

from ..devices import resolve_device
from ..models import InferenceRetinaFace, RetinaFace
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
