"""The two RetinaFace backbones, written out so that Pytorch_Retinaface checkpoints load
with their own key names (``body.stage1.0.0.weight``, ``body.layer1.0.conv1.weight``).

Each returns the feature maps at strides 8, 16 and 32. ``padding_mask`` (see
:class:`~retinaface_ext.models.layers.PaddingMask`) is applied to the input of every
spatial convolution when differently sized images share a batch.
"""

from typing import List, Optional

import torch
from torch import nn

from .layers import PaddingMask, conv_bn, conv_dw, maybe_mask


class MobileNetV1(nn.Module):
    """MobileNetV1 at width 0.25, as Pytorch_Retinaface builds it (no classifier):
    ``stage1`` ends at stride 8 with 64 channels, ``stage2`` at 16 with 128, ``stage3``
    at 32 with 256. LeakyReLU(0.1) throughout."""

    out_channels = (64, 128, 256)

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, stride=2, negative_slope=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor, padding_mask: Optional[PaddingMask] = None) -> List[torch.Tensor]:
        features = []
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                x = maybe_mask(block(x), padding_mask)
            features.append(x)
        return features


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (v1.5: the stride sits on the 3x3 convolution)."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor, padding_mask: Optional[PaddingMask] = None) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = maybe_mask(self.relu(self.bn1(self.conv1(x))), padding_mask)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 without its classifier; returns ``layer2``, ``layer3`` and ``layer4``
    (512, 1024 and 2048 channels)."""

    out_channels = (512, 1024, 2048)
    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = [Bottleneck(in_channels, width, stride)]
            layer += [Bottleneck(width * 4, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            in_channels = width * 4

    def forward(self, x: torch.Tensor, padding_mask: Optional[PaddingMask] = None) -> List[torch.Tensor]:
        # ReLU output is >= 0, so zeros in the padding never win the max pooling.
        x = self.maxpool(maybe_mask(self.relu(self.bn1(self.conv1(x))), padding_mask))
        features = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            for block in layer:
                x = block(x, padding_mask)
            if index:
                features.append(x)
        return features
