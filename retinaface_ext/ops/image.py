"""Pre-processing on our kernels: channels-last pixels to the network's float planes."""

from typing import Sequence

import torch

from .. import _extension
from ._common import check_tensors


def image_planes(image: torch.Tensor, mean: Sequence[float]) -> torch.Tensor:
    """``image - mean`` as float32 planes, in one pass over the pixels.

    Args:
        image: ``[H, W, C]`` or ``[B, H, W, C]`` uint8 or float32 pixels, channels last
            (how OpenCV, numpy and PIL hold images; any strides), 1 to 4 channels.
        mean: ``C`` numbers, subtracted from their channels (in float32).

    Returns:
        float32 ``[C, H, W]`` or ``[B, C, H, W]``, contiguous (NCHW): the input of a network
        that reads planes, such as an onnxruntime session. Differentiable with respect to
        a float32 ``image``.
    """
    check_tensors("image_planes", image=image)
    return torch.ops.retinaface_ext.image_planes(image, [float(m) for m in mean])


if _extension.is_available():

    def _image_planes_backward(ctx, grad):
        return grad.movedim(-3, -1), None

    torch.library.register_autograd("retinaface_ext::image_planes", _image_planes_backward)
