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

    @torch.library.register_fake("retinaface_ext::image_planes")
    def _image_planes_fake(image, mean):
        # The kernels' checks (csrc/image/image_checks.cpp), with their messages.
        torch._check(
            image.dim() in (3, 4),
            lambda: (
                f"image_planes: image must have shape [H, W, C] or "
                f"[B, H, W, C] (channels last), got {list(image.shape)}"
            ),
        )
        torch._check(
            image.dtype in (torch.uint8, torch.float32),
            lambda: f"image_planes: image must be uint8 or float32, got {image.dtype}",
        )
        channels = image.shape[-1]
        torch._check(
            1 <= channels <= 4,
            lambda: (
                f"image_planes: image must have 1 to 4 channels (its last dimension), got shape {list(image.shape)}"
            ),
        )
        torch._check(
            len(mean) == channels,
            lambda: f"image_planes: mean must hold one value per channel ({channels}), got {len(mean)}",
        )
        return image.new_empty((*image.shape[:-3], image.shape[-1], *image.shape[-3:-1]), dtype=torch.float32)

    def _image_planes_backward(ctx, grad):
        return grad.movedim(-3, -1), None

    torch.library.register_autograd("retinaface_ext::image_planes", _image_planes_backward)
