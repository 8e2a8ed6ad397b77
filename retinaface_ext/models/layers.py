"""Building blocks shared by the backbones and the RetinaFace neck: convolution + BatchNorm
(+ activation) stacks named as Pytorch_Retinaface names them, BatchNorm folding, and the
padding mask that lets differently sized images share one batch."""

import copy
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from ..priors import feature_map_size


def activation(negative_slope: float) -> nn.Module:
    # Pytorch_Retinaface writes LeakyReLU(0) where it means ReLU; both have no parameters.
    if negative_slope == 0:
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope, inplace=True)


def conv_bn(in_channels, out_channels, kernel_size=3, stride=1, negative_slope=None, conv=None):
    """``Sequential(conv, BatchNorm2d[, activation])``: keys ``0.weight``, ``1.*``.

    ``negative_slope=None`` leaves the activation out. ``conv`` replaces the plain
    convolution (the SSH passes a deformable one).
    """
    if conv is None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    layers = [conv, nn.BatchNorm2d(out_channels)]
    if negative_slope is not None:
        layers.append(activation(negative_slope))
    return nn.Sequential(*layers)


def conv_dw(in_channels, out_channels, stride, negative_slope=0.1):
    """MobileNetV1's depthwise 3x3 + pointwise 1x1 block, each with BatchNorm and LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        activation(negative_slope),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        activation(negative_slope),
    )


# The deepest feature map the mask is asked about is at stride 2 ** this (RetinaFace: 5).
_MAX_LOG2_STRIDE = 11


class PaddingMask:
    """Zeroes what lies outside each image when differently sized images share a padded
    batch (the canvas), at whatever resolution the network has reached.

    Convolutions with zero padding see zeros beyond an image's border. Inside a canvas
    they would see the neighbouring padding instead, which stops being zero after the
    first BatchNorm or bias. Applying the mask to every input of a 3x3 convolution (and
    of max pooling) keeps each image's features equal to those it gets alone (up to
    float rounding: about 1e-4 px on the boxes). At each stride an image covers the rows
    and columns :func:`~retinaface_ext.priors.feature_map_size` gives.
    """

    def __init__(self, image_sizes: Sequence[Tuple[int, int]], canvas: Tuple[int, int]):
        self.image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        self.canvas = (int(canvas[0]), int(canvas[1]))
        self._masks: Dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = self.mask(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return x * mask

    def stride_of(self, height: int, width: int) -> int:
        canvas_h, canvas_w = self.canvas
        for log2 in range(_MAX_LOG2_STRIDE + 1):
            stride = 1 << log2
            if feature_map_size(canvas_h, canvas_w, stride) == (height, width):
                return stride
        raise ValueError(
            f"PaddingMask: a {height}x{width} feature map is no power-of-two "
            f"reduction of the {canvas_h}x{canvas_w} canvas"
        )

    def mask(self, height, width, device=None, dtype=torch.float32) -> torch.Tensor:
        """``[B, 1, height, width]``: 1 inside each image, 0 in its padding."""
        stride = self.stride_of(height, width)
        covered = [feature_map_size(h, w, stride) for h, w in self.image_sizes]
        rows = torch.tensor([r for r, _ in covered], device=device)
        cols = torch.tensor([c for _, c in covered], device=device)
        inside_rows = torch.arange(height, device=device)[None, :] < rows[:, None]
        inside_cols = torch.arange(width, device=device)[None, :] < cols[:, None]
        return (inside_rows[:, None, :, None] & inside_cols[:, None, None, :]).to(dtype)


def maybe_mask(x: torch.Tensor, padding_mask) -> torch.Tensor:
    return x if padding_mask is None else padding_mask(x)


def _folded(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of ``conv`` whose weight and bias absorb the inference-time BatchNorm."""
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.weight.mul_(scale.reshape(-1, *([1] * (folded.weight.dim() - 1))))
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return folded


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the convolution before it, in place, and return ``module``.

    For inference only: the result computes what the model computes in eval mode, with
    one pass less per layer. Pairs are consecutive ``Sequential`` items and the
    ``(conv, bn)`` attribute names a module lists in ``conv_bn_pairs``. Plain and
    deformable convolutions both fold (each is linear in its weight).
    """
    if any(isinstance(m, nn.BatchNorm2d) and m.training for m in module.modules()):
        raise ValueError(
            "fold_batchnorm: the model is in training mode; call .eval() first "
            "(folding freezes the BatchNorm running statistics)"
        )
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        pairs = [(str(i), str(i + 1)) for i in range(len(module) - 1)]
    else:
        pairs = getattr(module, "conv_bn_pairs", ())
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        if isinstance(bn, nn.BatchNorm2d) and hasattr(conv, "weight") and not isinstance(conv, nn.BatchNorm2d):
            setattr(module, conv_name, _folded(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return module
