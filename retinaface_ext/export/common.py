"""What ONNX and AOTInductor export share: the network to export, the example input,
the argument checks, and the round-trip comparison of an exported graph with eager
PyTorch."""

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from ..models import InferenceRetinaFace, RetinaFace
from ..models.config import MEAN_BGR, DetectionSettings
from .graph import DetectionGraph

#: Outputs may differ from eager PyTorch's by this much, relative to their size.
TOLERANCE = 1e-3


def prepare_network(model, caller: str) -> InferenceRetinaFace:
    """The network to export from a RetinaFace, a checkpoint (path or dict, or published
    weights by name) or an InferenceRetinaFace made with ``fuse_activations=False``, on
    the CPU and in eval mode (the caller's model is not moved)."""
    if isinstance(model, InferenceRetinaFace):
        if any(type(m).__name__ == "ConvActivation" for m in model.modules()):
            raise ValueError(
                f"{caller}: this InferenceRetinaFace fuses activations into oneDNN calls that an exported "
                "graph does not know; pass the RetinaFace (or make it with fuse_activations=False)"
            )
        return model.eval()
    if not isinstance(model, RetinaFace):
        if isinstance(model, torch.nn.Module):
            raise TypeError(f"{caller}: model must be a RetinaFace or a checkpoint, got {type(model).__name__}")
        model = RetinaFace.from_checkpoint(model)
    return InferenceRetinaFace(model, channels_last=False, fuse_activations=False).cpu().eval()


def exported_module(network: InferenceRetinaFace, postprocess: bool, settings, onnx: bool) -> torch.nn.Module:
    """The network alone, or with the post-processing (:class:`DetectionGraph`)."""
    if not postprocess:
        return network
    return DetectionGraph(network, settings or DetectionSettings(), onnx=onnx).eval()


def check_size(size, caller: str) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{caller}: size must be (height, width), got {size!r}") from None
    if height < 32 or width < 32:
        raise ValueError(f"{caller}: size must be at least 32 x 32 (the network's coarsest stride), got {size!r}")
    return height, width


def check_batch(batch, caller: str) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{caller}: batch must be a whole number >= 1, got {batch!r}")
    return batch


def example_images(batch: int, height: int, width: int, raw: bool, seed: int = 0) -> torch.Tensor:
    """Random images: BGR in 0..255, mean subtracted unless ``raw``."""
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
    return images if raw else images - torch.tensor(MEAN_BGR).reshape(1, 3, 1, 1)


def compare_outputs(
    caller: str,
    engine: str,
    names: Sequence[str],
    expected: Sequence,
    found: Sequence,
    images: torch.Tensor,
    differences: Dict[str, float],
) -> None:
    """Records in ``differences`` the largest absolute difference of each output of an
    exported graph (``found``) from eager PyTorch's (``expected``) at ``images``' size;
    RuntimeError naming the output when a shape differs or a value by more than
    :data:`TOLERANCE` relative to the output's size."""
    where = f"at input {list(images.shape)}"
    for name, want, got in zip(names, expected, found):
        want, got = np.asarray(want, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if want.shape != got.shape:
            raise RuntimeError(
                f"{caller}: {engine}'s {name} has shape {list(got.shape)} {where}, PyTorch's {list(want.shape)}"
            )
        difference = float(np.abs(want - got).max()) if want.size else 0.0
        key = f"{name}@{images.shape[2]}x{images.shape[3]}"
        differences[key] = max(differences.get(key, 0.0), difference)
        if difference > TOLERANCE * max(1.0, float(np.abs(want).max()) if want.size else 1.0):
            raise RuntimeError(f"{caller}: {engine} differs from PyTorch by {difference:.3g} in {name} {where}")
