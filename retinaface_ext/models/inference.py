"""RetinaFace rearranged for inference: BatchNorm folded, convolution and activation in one
oneDNN call, the three heads of each level in one convolution, channels-last memory."""

import copy

import torch
from torch import nn

from . import layers
from .retinaface import RetinaFace, check_images, per_anchor

_BOX, _CLASS, _LANDMARK = 4, 2, 10
# oneDNN's convolution with a fused activation, as inductor uses it; absent from some builds.
_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_PER_ANCHOR = _BOX + _CLASS + _LANDMARK


def _fused_head(box: nn.Conv2d, cls: nn.Conv2d, landmark: nn.Conv2d, anchors: int) -> nn.Conv2d:
    """One 1x1 convolution giving, per anchor, its 4 box, 2 class and 10 landmark values."""
    fused = nn.Conv2d(box.in_channels, anchors * _PER_ANCHOR, 1).to(box.weight.device, box.weight.dtype)
    weights, biases = [], []
    for anchor in range(anchors):
        for conv, values in ((box, _BOX), (cls, _CLASS), (landmark, _LANDMARK)):
            rows = slice(anchor * values, (anchor + 1) * values)
            weights.append(conv.weight[rows])
            biases.append(conv.bias[rows])
    with torch.no_grad():
        fused.weight.copy_(torch.cat(weights))
        fused.bias.copy_(torch.cat(biases))
    return fused


class ConvActivation(nn.Module):
    """A convolution followed by ReLU or LeakyReLU. On the CPU in float32 both run as one
    oneDNN call that applies the activation as it writes the output (about 20% faster
    than two passes at MobileNet's sizes); elsewhere, or if that call fails, it is
    ``activation(conv(x))``."""

    def __init__(self, conv: nn.Conv2d, activation: nn.Module):
        super().__init__()
        self.conv, self.activation = conv, activation
        if isinstance(activation, nn.LeakyReLU):
            self.attr, self.scalars = "leaky_relu", [activation.negative_slope]
        else:
            self.attr, self.scalars = "relu", []
        self.fused = _CONV_POINTWISE is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if self.fused and x.device.type == "cpu" and x.dtype == conv.weight.dtype == torch.float32:
            try:
                return _CONV_POINTWISE(
                    x,
                    conv.weight,
                    conv.bias,
                    list(conv.padding),
                    list(conv.stride),
                    list(conv.dilation),
                    conv.groups,
                    self.attr,
                    self.scalars,
                    "",
                )
            except RuntimeError:  # an internal op of torch: fall back if this build lacks it
                self.fused = False
        return self.activation(conv(x))


def fuse_conv_activations(module: nn.Module) -> nn.Module:
    """Replace, in every Sequential, a folded ``Conv2d, Identity, (Leaky)ReLU`` run by
    ``ConvActivation, Identity, Identity`` (indices kept), in place."""
    for child in module.children():
        fuse_conv_activations(child)
    if isinstance(module, nn.Sequential):
        items = list(module)
        for i in range(len(items) - 2):
            conv, between, activation = items[i : i + 3]
            if (
                type(conv) is nn.Conv2d
                and isinstance(between, nn.Identity)
                and type(activation) in (nn.ReLU, nn.LeakyReLU)
                and isinstance(conv.padding, tuple)
            ):
                module[i], module[i + 2] = ConvActivation(conv, activation), nn.Identity()
                items = list(module)
    return module


class InferenceRetinaFace(nn.Module):
    """The outputs of a :class:`RetinaFace` in eval mode, computed faster: BatchNorm folded
    into the convolutions (``fold_batchnorm``), the box, class and landmark heads of each
    level merged into one 1x1 convolution, folded convolutions and their activations run
    as one oneDNN call on the CPU (:class:`ConvActivation`), and channels-last memory.

    The source model is copied and left as it was. Same ``forward`` as RetinaFace; the
    three outputs are views into one tensor. For inference only: not trainable. ONNX
    does not know oneDNN's fused op: export with ``fuse_activations=False``.
    """

    def __init__(
        self, model: RetinaFace, fold_batchnorm: bool = True, channels_last: bool = True, fuse_activations: bool = True
    ):
        super().__init__()
        model = copy.deepcopy(model).eval().requires_grad_(False)
        if fold_batchnorm:
            layers.fold_batchnorm(model)
            if fuse_activations:
                fuse_conv_activations(model)
        self.config, self.dcn = model.config, model.dcn
        self.body, self.fpn = model.body, model.fpn
        self.ssh = nn.ModuleList([model.ssh1, model.ssh2, model.ssh3])
        anchors = self.config.anchors_per_location
        self.heads = nn.ModuleList(
            _fused_head(box.conv1x1, cls.conv1x1, landmark.conv1x1, anchors)
            for box, cls, landmark in zip(model.BboxHead, model.ClassHead, model.LandmarkHead)
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("InferenceRetinaFace is for inference only; train the RetinaFace it came from")
        return super().train(False)

    def forward(self, images: torch.Tensor, padding_mask=None):
        check_images(images)
        features = self.fpn(self.body(images, padding_mask), padding_mask)
        outputs = []
        for ssh, head, feature in zip(self.ssh, self.heads, features):
            outputs.append(per_anchor(head(ssh(feature, padding_mask)), _PER_ANCHOR))
        out = torch.cat(outputs, dim=1)
        return out[..., :_BOX], out[..., _BOX : _BOX + _CLASS], out[..., _BOX + _CLASS :]
