"""RetinaFace: backbone, 3-level FPN, SSH context modules and the class / box / landmark
heads, with Pytorch_Retinaface's module names so that its checkpoints load strictly."""

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import DeformConv2d
from .backbones import MobileNetV1, ResNet50
from .checkpoint import check_finite, describe, load_state_dict_strict, plain_to_dcn
from .config import RetinaFaceConfig, config_for
from .layers import PaddingMask, conv_bn, maybe_mask
from .loading import read_state_dict, source_name


def _slope(channels: int) -> float:
    # Pytorch_Retinaface: LeakyReLU(0.1) for the narrow MobileNet neck, ReLU for ResNet's.
    return 0.1 if channels <= 64 else 0.0


class FPN(nn.Module):
    """Three lateral 1x1 convolutions, top-down nearest upsampling and two 3x3 merges."""

    def __init__(self, in_channels: Tuple[int, int, int], out_channels: int):
        super().__init__()
        slope = _slope(out_channels)
        self.output1 = conv_bn(in_channels[0], out_channels, 1, negative_slope=slope)
        self.output2 = conv_bn(in_channels[1], out_channels, 1, negative_slope=slope)
        self.output3 = conv_bn(in_channels[2], out_channels, 1, negative_slope=slope)
        self.merge1 = conv_bn(out_channels, out_channels, 3, negative_slope=slope)
        self.merge2 = conv_bn(out_channels, out_channels, 3, negative_slope=slope)

    def forward(self, features: List[torch.Tensor], padding_mask=None) -> List[torch.Tensor]:
        output1, output2 = self.output1(features[0]), self.output2(features[1])
        output3 = maybe_mask(self.output3(features[2]), padding_mask)
        output2 = output2 + F.interpolate(output3, size=output2.shape[-2:], mode="nearest")
        output2 = maybe_mask(self.merge2(maybe_mask(output2, padding_mask)), padding_mask)
        output1 = output1 + F.interpolate(output2, size=output1.shape[-2:], mode="nearest")
        output1 = maybe_mask(self.merge1(maybe_mask(output1, padding_mask)), padding_mask)
        return [output1, output2, output3]


class SSH(nn.Module):
    """The SSH context module: three branches of one, two and three stacked 3x3
    convolutions (receptive fields 3x3, 5x5, 7x7) with out/2, out/4, out/4 channels,
    concatenated and passed through ReLU. The names are the reference's (``conv5X5_1``,
    ``conv7x7_3``, ...) even though every convolution is 3x3.

    With ``dcn=True`` all five 3x3 convolutions are modulated deformable convolutions
    (:class:`retinaface_ext.nn.DeformConv2d`, bias-free before their BatchNorm). The
    RetinaFace paper replaces every 3x3 convolution of its context modules with DCN so
    that the receptive field can follow non-rigid faces (pose, occlusion); sharing the
    first convolution of the 5x5 and 7x7 branches means making it deformable moves both.
    """

    def __init__(self, in_channels: int, out_channels: int, dcn: bool = False):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH: out_channels must be a multiple of 4, got {out_channels}")
        slope, quarter = _slope(out_channels), out_channels // 4

        def conv3x3(cin, cout, negative_slope=None):
            deformable = DeformConv2d(cin, cout, 3, padding=1, bias=False) if dcn else None
            return conv_bn(cin, cout, 3, negative_slope=negative_slope, conv=deformable)

        self.conv3X3 = conv3x3(in_channels, out_channels // 2)
        self.conv5X5_1 = conv3x3(in_channels, quarter, slope)
        self.conv5X5_2 = conv3x3(quarter, quarter)
        self.conv7X7_2 = conv3x3(quarter, quarter, slope)
        self.conv7x7_3 = conv3x3(quarter, quarter)

    def forward(self, x: torch.Tensor, padding_mask=None) -> torch.Tensor:
        branch5_1 = maybe_mask(self.conv5X5_1(x), padding_mask)
        branch7_2 = maybe_mask(self.conv7X7_2(branch5_1), padding_mask)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_1), self.conv7x7_3(branch7_2)], dim=1)
        return F.relu(out, inplace=True)


class _Head(nn.Module):
    """A 1x1 convolution giving ``values`` numbers per anchor, as ``[B, H*W*anchors, values]``."""

    def __init__(self, in_channels: int, anchors: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_anchor(self.conv1x1(x), self.values)


def per_anchor(out: torch.Tensor, values: int) -> torch.Tensor:
    """A head's ``[B, anchors * values, H, W]`` output as ``[B, H * W * anchors, values]``
    (sizes spelled out: a batch of 0 has no -1 to infer)."""
    batch, channels, height, width = out.shape
    return out.permute(0, 2, 3, 1).reshape(batch, height * width * (channels // values), values)


def check_images(images: torch.Tensor) -> None:
    """What every RetinaFace forward needs: a floating-point ``[B, 3, H, W]`` batch."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"RetinaFace: images must be a tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"RetinaFace: images must have shape [B, 3, H, W] (BGR), got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"RetinaFace: images must be floating point (BGR minus the mean), got {images.dtype}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"RetinaFace: images must not be empty, got {list(images.shape)}")


class RetinaFace(nn.Module):
    """The RetinaFace network.

    Args:
        backbone: ``"mobilenet0.25"`` or ``"resnet50"`` (initialised randomly; load a
            checkpoint with :meth:`load_checkpoint` or :meth:`from_checkpoint`).
        dcn: use deformable convolutions in the SSH context modules (see :class:`SSH`).
        config: override the preset of the backbone (:mod:`retinaface_ext.models.config`).

    ``forward(images)`` takes ``[B, 3, H, W]`` BGR images minus the mean (104, 117, 123)
    and returns ``loc [B, P, 4]``, class logits ``[B, P, 2]`` (background, face; apply
    softmax for scores) and ``landm [B, P, 10]`` (landmark offsets) for the P priors of
    :func:`retinaface_ext.priors.prior_boxes` at (H, W), in that order.
    """

    def __init__(self, backbone: str = "mobilenet0.25", dcn: bool = False, config: Optional[RetinaFaceConfig] = None):
        super().__init__()
        self.config = config if config is not None else config_for(backbone)
        self.dcn = dcn
        self.body = MobileNetV1() if self.config.backbone == "mobilenet0.25" else ResNet50()
        channels, anchors = self.config.out_channels, self.config.anchors_per_location
        self.fpn = FPN(self.config.in_channels, channels)
        self.ssh1 = SSH(channels, channels, dcn)
        self.ssh2 = SSH(channels, channels, dcn)
        self.ssh3 = SSH(channels, channels, dcn)
        levels = len(self.config.steps)
        self.ClassHead = nn.ModuleList(_Head(channels, anchors, 2) for _ in range(levels))
        self.BboxHead = nn.ModuleList(_Head(channels, anchors, 4) for _ in range(levels))
        self.LandmarkHead = nn.ModuleList(_Head(channels, anchors, 10) for _ in range(levels))

    def forward(self, images: torch.Tensor, padding_mask: Optional[PaddingMask] = None):
        check_images(images)
        features = self.fpn(self.body(images, padding_mask), padding_mask)
        features = [ssh(f, padding_mask) for ssh, f in zip((self.ssh1, self.ssh2, self.ssh3), features)]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, logits, landm

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def load_checkpoint(self, checkpoint: Union[str, dict]) -> "RetinaFace":
        """Load a Pytorch_Retinaface checkpoint (a path, a state dict or the name of
        published weights) strictly; the ``module.`` prefix of DataParallel checkpoints
        is removed. A checkpoint that does not fit raises ValueError listing the missing,
        unexpected and mis-shaped keys."""
        load_state_dict_strict(self, read_state_dict(checkpoint), source_name(checkpoint))
        return self

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Union[str, dict], backbone: Optional[str] = None, dcn: Optional[bool] = None
    ) -> "RetinaFace":
        """Build the network a checkpoint was trained as and load it. ``backbone`` and
        ``dcn`` are read from the checkpoint's keys unless given.

        ``dcn=True`` with a plain checkpoint (Pytorch_Retinaface's, say) builds the DCN
        model that computes exactly what the plain one does (see
        :func:`retinaface_ext.models.checkpoint.plain_to_dcn`: offsets start at zero and
        the deformable weights at twice the plain ones, cancelling the mask's initial
        0.5), so that fine-tuning with DCN starts from the published detector.
        """
        state_dict, name = read_state_dict(checkpoint), source_name(checkpoint)
        found_backbone, found_dcn = describe(state_dict, name)
        check_finite(state_dict, name)
        model = cls(backbone or found_backbone, dcn=found_dcn if dcn is None else dcn)
        if model.dcn and not found_dcn:
            state_dict = plain_to_dcn(state_dict, model)
        load_state_dict_strict(model, state_dict, name)
        return model
