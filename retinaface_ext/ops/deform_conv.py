"""Modulated deformable convolution (DCNv2) on our kernels, differentiable."""

from typing import List, Optional, Tuple, Union

import torch

from .. import _extension
from ._common import check_pair, check_tensors, int_pair

IntPair = Union[int, Tuple[int, int], List[int]]


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Deformable convolution with torchvision's signature, offset layout and border rule.

    Args:
        input: ``[N, C, H, W]``. weight: ``[O, C / groups, kh, kw]`` (groups inferred).
        offset: ``[N, 2 * offset_groups * kh * kw, Ho, Wo]``: for each offset group and
            kernel point (row-major), (dy, dx). Offset groups are inferred.
        mask: ``[N, offset_groups * kh * kw, Ho, Wo]`` modulation (DCNv2), or None (DCNv1).
        bias: ``[O]`` or None.
        stride, padding, dilation: an int or a pair of ints.

    Kernel point (a, b) of output (i, j) samples the input at
    (i * stride - padding + a * dilation + dy, j * ... + dx) by bilinear interpolation with
    zeros outside the image: a point with y < -1 or y >= H (x likewise) samples 0 and gets
    no gradient; at integer coordinates (y = -1 included) the gradient is the one-sided
    one from above, as torchvision's. Gradients flow to input, offset, mask, weight and
    bias; second derivatives are not supported (an error, as torchvision's).

    A NaN or infinite offset, or a NaN mask, makes the affected outputs and gradients
    NaN, so that a diverging training run shows (torchvision returns 0 for an infinite
    offset in the forward). Compiles with ``torch.jit.script`` and ``torch.compile``.
    """
    if not torch.jit.is_scripting():
        check_tensors("deform_conv2d", input=input, offset=offset, weight=weight, bias=bias, mask=mask)
        stride = check_pair("deform_conv2d", "stride", stride)
        padding = check_pair("deform_conv2d", "padding", padding)
        dilation = check_pair("deform_conv2d", "dilation", dilation)
    sh, sw = int_pair(stride)
    ph, pw = int_pair(padding)
    dh, dw = int_pair(dilation)
    return torch.ops.retinaface_ext.deform_conv2d(input, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw)


if _extension.is_available():

    def _setup_context(ctx, inputs, output):
        input, weight, offset, mask, bias, *args = inputs
        ctx.save_for_backward(input, weight, offset, mask, bias)
        ctx.args = args

    def _backward(ctx, grad_out):
        input, weight, offset, mask, bias = ctx.saved_tensors
        grad_input, grad_weight, grad_offset, grad_mask, grad_bias = torch.ops.retinaface_ext.deform_conv2d_backward(
            grad_out, input, weight, offset, mask, bias, *ctx.args
        )
        return (
            grad_input,
            grad_weight,
            grad_offset,
            grad_mask if mask is not None else None,
            grad_bias if bias is not None else None,
        ) + (None,) * len(ctx.args)

    torch.library.register_autograd("retinaface_ext::deform_conv2d", _backward, setup_context=_setup_context)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError("deform_conv2d: double backward (the gradient of a gradient) is not supported")

    # Without this, create_graph=True would give gradients that silently have no gradient.
    torch.library.register_autograd(
        "retinaface_ext::deform_conv2d_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )
