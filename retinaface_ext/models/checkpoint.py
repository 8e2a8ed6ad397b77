"""Reading Pytorch_Retinaface checkpoint files and loading them strictly, with errors that
say what does not fit. Names of published weights are resolved above this module
(:mod:`.loading`); here a checkpoint is a path or a dict."""

import os
from typing import Dict, Tuple, Union

import torch
from torch import nn

from ..nn import DeformConv2d

_WRAPPER_KEYS = ("state_dict", "model", "net")


def read_checkpoint(checkpoint: Union[str, os.PathLike, dict]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file or dict, on the CPU, without the ``module.``
    prefix of DataParallel. Files are read with ``weights_only=True``."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and weights-only errors alike
            raise ValueError(
                f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})"
            ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"a checkpoint must be a state dict, got {type(checkpoint).__name__}")
    for key in _WRAPPER_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    state_dict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[key[len("module.") :] if key.startswith("module.") else key] = value
    return state_dict


def check_finite(state_dict: Dict[str, torch.Tensor], source="checkpoint") -> None:
    """Raise ValueError naming the tensors that hold NaN or inf: such weights make whole
    levels of detections vanish or the outputs non-finite, far from the cause."""
    bad = [
        key for key, value in state_dict.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
        raise ValueError(f"{name}: {len(bad)} tensors hold NaN or inf: {shown}")


def describe(state_dict: Dict[str, torch.Tensor], source="checkpoint") -> Tuple[str, bool]:
    """(backbone, dcn) of the RetinaFace a state dict belongs to."""
    if any(key.startswith("body.stage1.") for key in state_dict):
        backbone = "mobilenet0.25"
    elif any(key.startswith("body.layer1.") for key in state_dict):
        backbone = "resnet50"
    else:
        name = source if isinstance(source, (str, os.PathLike)) else "checkpoint"
        raise ValueError(
            f"{name}: not a RetinaFace checkpoint (no body.stage1.* (MobileNet-0.25) or body.layer1.* (ResNet-50) keys)"
        )
    dcn = any(".conv_offset." in key for key in state_dict)
    return backbone, dcn


def load_state_dict_strict(model: nn.Module, checkpoint, name: str = "checkpoint") -> None:
    """Load ``checkpoint`` (a file or a dict; ``name`` says where it came from) into
    ``model`` with ``strict=True``; on mismatch raise ValueError naming the missing,
    unexpected and mis-shaped keys (and the backbone it was made for)."""
    name = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else name
    state_dict = read_checkpoint(checkpoint)
    expected = model.state_dict()
    # Checkpoints older than BatchNorm's num_batches_tracked load fine without it.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} (checkpoint {list(state_dict[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        problems = []
        try:
            found_backbone, found_dcn = describe(state_dict, name)
            wanted = getattr(getattr(model, "config", None), "backbone", None)
            if wanted and (found_backbone, found_dcn) != (wanted, getattr(model, "dcn", False)):
                problems.append(
                    f"it holds a {found_backbone}{' DCN' if found_dcn else ''} RetinaFace, "
                    f"the model is {wanted}{' DCN' if getattr(model, 'dcn', False) else ''}"
                )
        except ValueError as error:
            problems.append(str(error))
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mis_shaped),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
                problems.append(f"{len(keys)} {label}: {shown}")
        raise ValueError(f"{name} does not fit {type(model).__name__}: " + "; ".join(problems))
    check_finite(state_dict, name)
    model.load_state_dict(state_dict, strict=True)


def plain_to_dcn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A plain (no DCN) RetinaFace state dict made to fit ``model``, a DCN RetinaFace of
    the same backbone, so that the DCN model computes exactly what the plain one does.

    Each deformable convolution gets its plain twin's weight times 2 and its offset and
    mask convolution at zero (the module's own initialisation): the offsets are then 0,
    which samples the plain convolution's grid, and every mask value is sigmoid(0) = 0.5,
    which the doubled weight cancels (both factors are powers of two, so no rounding
    either). Training then starts from the plain detector and learns to deform.
    """

    state_dict = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, DeformConv2d):
            continue
        weight = f"{name}.weight"
        if weight not in state_dict:
            continue  # load_state_dict_strict names it as missing
        scale = 2.0 if module.modulated else 1.0
        state_dict[weight] = state_dict[weight] * scale
        for key, value in module.conv_offset.state_dict().items():
            state_dict.setdefault(f"{name}.conv_offset.{key}", torch.zeros_like(value))
        if module.bias is not None:
            state_dict.setdefault(f"{name}.bias", torch.zeros_like(module.bias))
    return state_dict
