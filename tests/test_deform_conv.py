"""Deformable convolution (DCNv2). So far the pure-PyTorch reference, which the kernels
of issue 4 will be compared with: it must equal torchvision's deform_conv2d, forward and
every gradient, and reduce to conv2d with zero offsets and a mask of ones."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from retinaface_ext.ops import reference


def make_case(N, C, H, W, O, kernel, stride, padding, dilation, groups, offset_groups, mask, bias, seed=0,
              dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    Ho = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    args = dict(
        input=torch.randn(N, C, H, W, generator=g, dtype=dtype),
        offset=torch.randn(N, 2 * offset_groups * kh * kw, Ho, Wo, generator=g, dtype=dtype) * 2,
        weight=torch.randn(O, C // groups, kh, kw, generator=g, dtype=dtype),
        bias=torch.randn(O, generator=g, dtype=dtype) if bias else None,
        mask=torch.rand(N, offset_groups * kh * kw, Ho, Wo, generator=g, dtype=dtype) if mask else None,
    )
    return args, dict(stride=stride, padding=padding, dilation=dilation)


def outputs_and_gradients(fn, args, options):
    leaves = {k: v.clone().requires_grad_() for k, v in args.items() if v is not None}
    out = fn(**{**args, **leaves}, **options)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out, dict(zip(leaves, grads))


CONFIGS = list(
    itertools.product(
        [1, 2],  # stride
        [0, 1, 2],  # padding
        [1, 2],  # dilation
        [(3, 3), (1, 1), (5, 3)],  # kernel
        [1, 2],  # groups
        [1, 2, 4],  # offset groups
    )
)


@pytest.mark.parametrize("stride, padding, dilation, kernel, groups, offset_groups", CONFIGS)
def test_reference_equals_torchvision(stride, padding, dilation, kernel, groups, offset_groups):
    torchvision = pytest.importorskip("torchvision")
    for mask, bias, batch in ((True, True, 3), (False, False, 1), (True, False, 2)):
        args, options = make_case(batch, 8, 9, 11, 4, kernel, stride, padding, dilation, groups, offset_groups, mask, bias)
        ours, our_grads = outputs_and_gradients(reference.deform_conv2d, args, options)
        theirs, their_grads = outputs_and_gradients(torchvision.ops.deform_conv2d, args, options)
        torch.testing.assert_close(ours, theirs)
        for name in our_grads:
            torch.testing.assert_close(our_grads[name], their_grads[name], msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 4)])
def test_zero_offsets_and_unit_mask_are_conv2d(stride, padding, dilation, groups):
    args, options = make_case(2, 8, 12, 10, 8, (3, 3), stride, padding, dilation, groups, 2, True, True)
    args["offset"] = torch.zeros_like(args["offset"])
    args["mask"] = torch.ones_like(args["mask"])
    expected = F.conv2d(args["input"], args["weight"], args["bias"], stride, padding, dilation, groups)
    torch.testing.assert_close(reference.deform_conv2d(**args, **options), expected)


def test_non_contiguous_inputs_and_empty_batch():
    args, options = make_case(2, 4, 7, 7, 6, (3, 3), 1, 1, 1, 1, 2, True, True)
    expected = reference.deform_conv2d(**args, **options)
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() == 4 else v)
               for k, v in args.items()}
    assert not strided["input"].is_contiguous()
    torch.testing.assert_close(reference.deform_conv2d(**strided, **options), expected)
    empty = {k: (v[:0] if k in ("input", "offset", "mask") else v) for k, v in args.items()}
    assert reference.deform_conv2d(**empty, **options).shape == (0, 6, 7, 7)
