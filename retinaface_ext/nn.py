"""Modules built on the kernels."""

import math
from typing import Optional

import torch
from torch import nn

from .ops._common import check_pair
from .ops.deform_conv import deform_conv2d


class DeformConv2d(nn.Module):
    """Deformable convolution that predicts its own offsets (and, when ``modulated``, its
    mask) with a plain convolution of the same geometry, as mmcv's
    ModulatedDeformConv2dPack does.

    The offset convolution starts at zero: at initialisation every offset is 0 and, when
    modulated, every mask value is sigmoid(0) = 0.5, so the module computes
    ``0.5 * conv2d(x, weight) + bias`` (``conv2d(x, weight) + bias`` when not modulated)
    and learns to deform from there.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        offset_groups=1,
        bias=True,
        modulated=True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must be multiples of groups ({groups})"
            )
        if in_channels % offset_groups:
            raise ValueError(
                f"DeformConv2d: in_channels ({in_channels}) must be a multiple of offset_groups ({offset_groups})"
            )
        self.kernel_size = check_pair("DeformConv2d", "kernel_size", kernel_size)
        self.stride = check_pair("DeformConv2d", "stride", stride)
        self.padding = check_pair("DeformConv2d", "padding", padding)
        self.dilation = check_pair("DeformConv2d", "dilation", dilation)
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        points = offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * points,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        predicted = self.conv_offset(x)
        points = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = predicted[:, : 2 * points]
        mask: Optional[torch.Tensor] = None
        if self.modulated:
            mask = torch.sigmoid(predicted[:, 2 * points :])
        # Under torch.autocast the op casts its inputs itself (csrc/deform_conv/deform_conv_autocast.cpp).
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self):
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"offset_groups={self.offset_groups}, bias={self.bias is not None}, modulated={self.modulated}"
        )
