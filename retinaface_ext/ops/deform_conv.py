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


def set_column_budget(elements: int) -> int:
    """Sets how many elements deform_conv2d's column buffer may hold (0: each backend's
    default; the batch then runs in chunks of images that fit) and returns the previous
    setting. Process-wide; meant for tests of the multi-chunk path."""
    _extension.require()
    return torch.ops.retinaface_ext.set_deform_conv_column_budget(int(elements))


def _output_size(input, weight, args):
    sh, sw, ph, pw, dh, dw = args
    kh, kw = weight.shape[2:]
    Ho = (input.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (input.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return Ho, Wo


def _check_args(input, weight, offset, mask, bias, args):
    """The kernels' checks (csrc/deform_conv/deform_conv_checks.cpp), in their order and
    with their messages, for the fake: what the kernels refuse, tracing refuses too, and
    nothing is divided by a zero here either."""
    torch._check(
        input.dim() == 4, lambda: f"deform_conv2d: input must have shape [N, C, H, W], got {list(input.shape)}"
    )
    torch._check(
        weight.dim() == 4,
        lambda: f"deform_conv2d: weight must have shape [O, C / groups, kh, kw], got {list(weight.shape)}",
    )
    sh, sw, ph, pw, dh, dw = args
    torch._check(
        sh > 0 and sw > 0 and dh > 0 and dw > 0 and ph >= 0 and pw >= 0,
        lambda: "deform_conv2d: stride and dilation must be positive and padding non-negative",
    )
    N, C, H, W = input.shape
    O, per_group, kh, kw = weight.shape
    torch._check(
        kh > 0 and kw > 0,
        lambda: f"deform_conv2d: the kernel must not be empty, got weight of shape {list(weight.shape)}",
    )
    torch._check(
        H > 0 and W > 0, lambda: f"deform_conv2d: input must have a non-empty image (H, W > 0), got {list(input.shape)}"
    )
    torch._check(
        per_group > 0 and C > 0 and C % per_group == 0,
        lambda: f"deform_conv2d: input channels ({C}) must be a positive multiple of weight.shape[1] ({per_group})",
    )
    groups = C // per_group
    torch._check(
        O % groups == 0, lambda: f"deform_conv2d: weight.shape[0] ({O}) must be a multiple of groups ({groups})"
    )
    Ho, Wo = _output_size(input, weight, args)
    torch._check(
        Ho > 0 and Wo > 0,
        lambda: (
            f"deform_conv2d: the output would be empty ({Ho} x {Wo}) for input "
            f"{list(input.shape)} and kernel {kh} x {kw}"
        ),
    )
    K = kh * kw
    torch._check(
        offset.dim() == 4
        and offset.shape[0] == N
        and offset.shape[1] > 0
        and offset.shape[1] % (2 * K) == 0
        and offset.shape[2] == Ho
        and offset.shape[3] == Wo,
        lambda: (
            f"deform_conv2d: offset must have shape [N, 2 * offset_groups * kh * kw, Ho, Wo] = "
            f"[{N}, 2 * offset_groups * {K}, {Ho}, {Wo}], got {list(offset.shape)}"
        ),
    )
    offset_groups = offset.shape[1] // (2 * K)
    torch._check(
        C % offset_groups == 0,
        lambda: f"deform_conv2d: input channels ({C}) must be a multiple of offset groups ({offset_groups})",
    )
    if mask is not None:
        torch._check(
            mask.dim() == 4 and tuple(mask.shape) == (N, offset_groups * K, Ho, Wo),
            lambda: (
                f"deform_conv2d: mask must have shape [N, offset_groups * kh * kw, Ho, Wo] = "
                f"[{N}, {offset_groups * K}, {Ho}, {Wo}], got {list(mask.shape)}"
            ),
        )
    if bias is not None:
        torch._check(
            bias.dim() == 1 and bias.shape[0] == O,
            lambda: f"deform_conv2d: bias must have shape [{O}], got {list(bias.shape)}",
        )
    for name, t in (("weight", weight), ("offset", offset), ("mask", mask), ("bias", bias)):
        if t is not None:
            torch._check(
                t.dtype == input.dtype,
                lambda: f"deform_conv2d: {name} must have the dtype of input ({input.dtype}), got {t.dtype}",
            )
            torch._check(
                t.device == input.device,
                lambda: f"deform_conv2d: {name} must be on the device of input ({input.device}), got {t.device}",
            )


if _extension.is_available():

    @torch.library.register_fake("retinaface_ext::deform_conv2d")
    def _deform_conv2d_fake(input, weight, offset, mask, bias, *args):
        _check_args(input, weight, offset, mask, bias, args)
        return input.new_empty((input.shape[0], weight.shape[0], *_output_size(input, weight, args)))

    @torch.library.register_fake("retinaface_ext::deform_conv2d_backward")
    def _deform_conv2d_backward_fake(grad_out, input, weight, offset, mask, bias, *args):
        _check_args(input, weight, offset, mask, bias, args)
        expected = (input.shape[0], weight.shape[0], *_output_size(input, weight, args))
        torch._check(
            tuple(grad_out.shape) == expected,
            lambda: f"deform_conv2d_backward: grad_out must have shape {list(expected)}, got {list(grad_out.shape)}",
        )
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

    def _no_double_backward(ctx, *grads):
        raise RuntimeError("deform_conv2d: double backward (the gradient of a gradient) is not supported")

    # Without this, create_graph=True would give gradients that silently have no gradient.
    torch.library.register_autograd(
        "retinaface_ext::deform_conv2d_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )
