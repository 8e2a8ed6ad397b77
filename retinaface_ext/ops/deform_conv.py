"""Modulated deformable convolution (DCNv2) on our kernels, differentiable."""

from typing import Optional

import torch

from .. import _extension


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Deformable convolution with torchvision's signature, offset layout and border rule.

    Args:
        input: ``[N, C, H, W]``. weight: ``[O, C / groups, kh, kw]`` (groups inferred).
        offset: ``[N, 2 * offset_groups * kh * kw, Ho, Wo]``: for each offset group and
            kernel point (row-major), (dy, dx). Offset groups are inferred.
        mask: ``[N, offset_groups * kh * kw, Ho, Wo]`` modulation (DCNv2), or None (DCNv1).
        bias: ``[O]`` or None.

    Kernel point (a, b) of output (i, j) samples the input at
    (i * stride - padding + a * dilation + dy, j * ... + dx) by bilinear interpolation with
    zeros outside the image (a point at or beyond one pixel outside samples 0 and gets no
    gradient). Gradients flow to input, offset, mask, weight and bias.
    """
    _extension.require(input)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    return torch.ops.retinaface_ext.deform_conv2d(input, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw)


def _output_size(input, weight, args):
    sh, sw, ph, pw, dh, dw = args
    kh, kw = weight.shape[2:]
    Ho = (input.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (input.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return Ho, Wo


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::deform_conv2d")
    def _deform_conv2d_fake(input, weight, offset, mask, bias, *args):
        torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "deform_conv2d: input and weight must be 4-D")
        return input.new_empty((input.shape[0], weight.shape[0], *_output_size(input, weight, args)))

    @torch.library.register_fake("retinaface_ext::deform_conv2d_backward")
    def _deform_conv2d_backward_fake(grad_out, input, weight, offset, mask, bias, *args):
        empty = input.new_empty((0,))
        return (
            torch.empty_like(input),
            torch.empty_like(weight),
            torch.empty_like(offset),
            torch.empty_like(mask) if mask is not None else empty,
            input.new_empty(bias.shape) if bias is not None else empty.clone(),
        )

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
