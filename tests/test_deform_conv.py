"""Deformable convolution (DCNv2): kernel = reference = torchvision, forward and every
gradient; zero offsets and a mask of ones are conv2d; gradcheck and opcheck. (Just over
400 lines: one op's whole contract; the fake kernel's refusals are in test_fake_kernels.)"""

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from retinaface_ext import ops
from retinaface_ext.ops import reference


def set_column_budget(elements: int) -> int:
    """The test-only hook (csrc/ops.cpp): the column buffer's size in elements (0: the
    backend's default); returns the previous setting."""
    return torch.ops.retinaface_ext_testing.set_deform_conv_column_budget(elements)


def make_case(
    N, C, H, W, O, kernel, stride, padding, dilation, groups, offset_groups, mask, bias, seed=0, dtype=torch.float64
):
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
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
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


def assert_same(fn_a, fn_b, args, options):
    a, grads_a = outputs_and_gradients(fn_a, args, options)
    b, grads_b = outputs_and_gradients(fn_b, args, options)
    # float32 sums of hundreds of terms in another order: a few 1e-5 relative apart
    tolerance = dict(rtol=1e-4, atol=1e-4) if a.dtype == torch.float32 else {}
    torch.testing.assert_close(a, b, **tolerance)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **tolerance, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("stride, padding, dilation, kernel, groups, offset_groups", CONFIGS)
def test_kernel_equals_reference_equals_torchvision(device, stride, padding, dilation, kernel, groups, offset_groups):
    torchvision = pytest.importorskip("torchvision")
    for mask, bias, batch in ((True, True, 3), (False, False, 1), (True, False, 2), (False, True, 1)):
        args, options = make_case(
            batch, 8, 9, 11, 4, kernel, stride, padding, dilation, groups, offset_groups, mask, bias
        )
        assert_same(reference.deform_conv2d, torchvision.ops.deform_conv2d, args, options)
        on_device = {k: (v.to(device) if v is not None else None) for k, v in args.items()}
        assert_same(ops.deform_conv2d, reference.deform_conv2d, on_device, options)


@pytest.mark.parametrize("channels", [16, 32, 64])  # the CPU kernel's loops compiled for these widths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_float32_and_float64(device, dtype, channels):
    args, options = make_case(2, channels, 20, 18, 8, (3, 3), 1, 1, 1, 1, 1, True, True, dtype=dtype)
    args = {k: (v.to(device) if v is not None else None) for k, v in args.items()}
    assert_same(ops.deform_conv2d, reference.deform_conv2d, args, options)


def test_gradcheck_away_from_integer_sample_positions():
    args, options = make_case(2, 4, 6, 5, 4, (3, 3), 1, 1, 1, 2, 2, True, True)
    # Keep every sampling point off integer coordinates, where bilinear sampling has kinks.
    args["offset"] = torch.floor(args["offset"]) + 0.25 + 0.5 * torch.rand(args["offset"].shape, dtype=torch.float64)
    inputs = tuple(
        v.requires_grad_() for v in (args["input"], args["offset"], args["weight"], args["mask"], args["bias"])
    )

    def fn(input, offset, weight, mask, bias):
        return ops.deform_conv2d(input, offset, weight, bias, mask=mask, **options)

    assert torch.autograd.gradcheck(fn, inputs)


def test_opcheck(device):
    args, options = make_case(2, 4, 7, 6, 4, (3, 3), 1, 1, 1, 2, 2, True, True)
    a = {k: v.to(device) for k, v in args.items()}
    torch.library.opcheck(
        torch.ops.retinaface_ext.deform_conv2d.default,
        (
            a["input"].requires_grad_(),
            a["weight"].requires_grad_(),
            a["offset"].requires_grad_(),
            a["mask"].requires_grad_(),
            a["bias"].requires_grad_(),
            1,
            1,
            1,
            1,
            1,
            1,
        ),
    )
    grad_out = torch.randn(2, 4, 7, 6, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.retinaface_ext.deform_conv2d_backward.default,
        (grad_out, a["input"].detach(), a["weight"].detach(), a["offset"].detach(), None, None, 1, 1, 1, 1, 1, 1),
    )


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 4)])
def test_zero_offsets_and_unit_mask_are_conv2d(stride, padding, dilation, groups):
    args, options = make_case(2, 8, 12, 10, 8, (3, 3), stride, padding, dilation, groups, 2, True, True)
    args["offset"] = torch.zeros_like(args["offset"])
    args["mask"] = torch.ones_like(args["mask"])
    expected = F.conv2d(args["input"], args["weight"], args["bias"], stride, padding, dilation, groups)
    torch.testing.assert_close(reference.deform_conv2d(**args, **options), expected)
    torch.testing.assert_close(ops.deform_conv2d(**args, **options), expected)


def test_non_contiguous_inputs_and_empty_batch():
    args, options = make_case(2, 4, 7, 7, 6, (3, 3), 1, 1, 1, 1, 2, True, True)
    expected = reference.deform_conv2d(**args, **options)
    strided = {
        k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() == 4 else v)
        for k, v in args.items()
    }
    assert not strided["input"].is_contiguous()
    torch.testing.assert_close(reference.deform_conv2d(**strided, **options), expected)
    torch.testing.assert_close(ops.deform_conv2d(**strided, **options), expected)
    empty = {k: (v[:0] if k in ("input", "offset", "mask") else v) for k, v in args.items()}
    assert reference.deform_conv2d(**empty, **options).shape == (0, 6, 7, 7)
    assert ops.deform_conv2d(**empty, **options).shape == (0, 6, 7, 7)


@pytest.mark.parametrize("layout", ["sliced from one prediction", "transposed"])
def test_offsets_and_mask_that_are_views_give_the_reference_and_its_gradients(layout):
    """DeformConv2d slices offsets and mask out of one prediction: the CPU kernel reads
    each image's part where it lies; other strides are copied first."""
    args, options = make_case(3, 4, 6, 5, 6, (3, 3), 1, 1, 1, 1, 2, True, True, dtype=torch.float32)
    offset, mask = args["offset"], args["mask"]
    if layout == "transposed":
        args["offset"] = offset.transpose(-1, -2).contiguous().transpose(-1, -2)
        args["mask"] = mask.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        prediction = torch.cat([offset, mask, torch.full_like(mask[:, :1], float("nan"))], 1)
        args["offset"], args["mask"] = prediction[:, : offset.shape[1]], prediction[:, offset.shape[1] : -1]
    assert not args["offset"].is_contiguous() and not args["mask"].is_contiguous()
    assert_same(reference.deform_conv2d, ops.deform_conv2d, args, options)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(input=a["input"][0]), r"input must have shape \[N, C, H, W\]"),
        (
            lambda a: a.update(weight=a["weight"][:, :3]),
            r"input channels \(4\) must be a positive multiple of weight.shape\[1\] \(3\)",
        ),
        (
            lambda a: a.update(offset=a["offset"][:, :5]),
            r"offset must have shape \[N, 2 \* offset_groups \* kh \* kw, Ho, Wo\]",
        ),
        (lambda a: a.update(offset=a["offset"][..., :3]), "offset must have shape"),
        (
            lambda a: a.update(mask=a["mask"][:, :4]),
            r"mask must have shape \[N, offset_groups \* kh \* kw, Ho, Wo\] = \[2, 18",
        ),
        (lambda a: a.update(bias=a["bias"][:2]), r"bias must have shape \[6\]"),
        (lambda a: a.update(weight=a["weight"].float()), "weight must have the dtype of input"),
        (lambda a: a.update(stride=0), "stride and dilation must be positive"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    args, options = make_case(2, 4, 7, 7, 6, (3, 3), 1, 1, 1, 1, 2, True, True)
    args.update(options)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        ops.deform_conv2d(**args)


@pytest.mark.parametrize("modulated", [True, False])
def test_module_at_initialisation(modulated):
    from retinaface_ext.nn import DeformConv2d

    torch.manual_seed(0)
    module = DeformConv2d(8, 6, kernel_size=3, padding=1, groups=2, offset_groups=2, modulated=modulated)
    x = torch.randn(2, 8, 9, 7)
    plain = F.conv2d(x, module.weight, None, 1, 1, 1, 2)
    expected = (0.5 * plain if modulated else plain) + module.bias[:, None, None]
    torch.testing.assert_close(module(x), expected)
    module(x).square().sum().backward()  # the offset convolution learns
    assert module.conv_offset.weight.grad.abs().sum() > 0
    assert "modulated=" in repr(module)


def _after_a_convolution_under_autocast(device, dtype):
    """A convolution then the raw op under torch.autocast: the op gets the convolution's
    reduced-precision output with float32 weight, offset, mask and bias (the autocast
    kernel casts them), against the float32 call; gradients reach every input."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    args, options = make_case(2, 4, 9, 8, 6, (3, 3), 1, 1, 1, 1, 1, True, True, dtype=torch.float32)
    args = {k: v.to(device).requires_grad_() for k, v in args.items()}
    x = args.pop("input")
    flat = [options[k] for k in ("stride", "stride", "padding", "padding", "dilation", "dilation")]

    def call(features):
        return torch.ops.retinaface_ext.deform_conv2d(
            features, args["weight"], args["offset"], args["mask"], args["bias"], *flat
        )

    expected = call(conv(x))
    with torch.autocast(device, dtype=dtype):
        features = conv(x)
        assert features.dtype == dtype
        out = call(features)
    out.float().sum().backward()
    assert all(t.grad is not None for t in (x, *args.values()))
    return out, expected


def test_raw_op_under_cpu_autocast_runs_in_float32():
    out, expected = _after_a_convolution_under_autocast("cpu", torch.bfloat16)
    assert out.dtype == torch.float32  # the CPU kernels' precision (README: "Mixed precision")
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_raw_op_under_cuda_autocast_runs_in_float16():
    out, expected = _after_a_convolution_under_autocast("cuda", torch.float16)
    assert out.dtype == torch.float16  # the autocast dtype, as a convolution's
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_accumulates_in_float32(dtype):
    args, options = make_case(2, 16, 20, 18, 8, (3, 3), 1, 1, 1, 1, 2, True, True, dtype=torch.float32)
    reduced = {k: v.cuda().to(dtype).requires_grad_() for k, v in args.items()}
    exact = {k: v.detach().float().requires_grad_() for k, v in reduced.items()}
    out = ops.deform_conv2d(**reduced, **options)
    expected = reference.deform_conv2d(**exact, **options)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
    out.float().sum().backward()
    expected.sum().backward()
    for name in reduced:
        scale = exact[name].grad.abs().max().item()
        torch.testing.assert_close(
            reduced[name].grad.float(),
            exact[name].grad,
            rtol=5e-2,
            atol=5e-2 * scale,
            msg=lambda m: f"grad {name}: {m}",
        )


def test_huge_offsets_sample_zero():
    args, options = make_case(1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 1, False, True)
    args["offset"][:, :, 2, 2] = 1e30
    args["offset"][:, :, 3, 3] = -1e30
    out = ops.deform_conv2d(**args, **options)
    for i in (2, 3):  # every kernel point samples 0 there: only the bias is left
        torch.testing.assert_close(out[0, :, i, i], args["bias"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_offsets_propagate_like_the_reference(device, value):
    """A diverging offset must show in the output and the gradients, never read as 0."""
    args, options = make_case(1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 1, True, True)
    args["offset"][0, 4, 1, 2] = value  # kernel point 2, dy, at output (1, 2)
    on_device = {k: v.to(device) for k, v in args.items()}
    out, grads = outputs_and_gradients(ops.deform_conv2d, on_device, options)
    assert torch.isnan(out[0, :, 1, 2]).all()
    assert torch.isfinite(out[0, :, 0, 0]).all() and int(torch.isnan(out).sum()) == out.shape[1]
    assert torch.isnan(grads["offset"][0, 4:6, 1, 2]).all() and torch.isnan(grads["mask"][0, 2, 1, 2])
    assert torch.isfinite(grads["offset"][0, :4]).all() and torch.isfinite(grads["input"]).all()
    torch.testing.assert_close(out.cpu(), reference.deform_conv2d(**args, **options), equal_nan=True)
    torchvision = pytest.importorskip("torchvision")
    _, torchvision_grads = outputs_and_gradients(torchvision.ops.deform_conv2d, args, options)
    assert torch.isnan(torchvision_grads["offset"][0, 4:6, 1, 2]).any()  # torchvision has NaN there too
    if value != value:  # NaN: torchvision's forward propagates it too (an infinite offset samples 0 there)
        torch.testing.assert_close(out.cpu(), torchvision.ops.deform_conv2d(**args, **options), equal_nan=True)


def test_a_nan_mask_propagates_even_outside_the_image():
    torchvision = pytest.importorskip("torchvision")
    args, options = make_case(1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 1, True, True)
    args["offset"][0, 0, 0, 0] = -5.0  # kernel point 0 of output (0, 0) samples far outside
    args["mask"][0, 0, 0, 0] = float("nan")
    out = ops.deform_conv2d(**args, **options)
    assert torch.isnan(out[0, :, 0, 0]).all() and int(torch.isnan(out).sum()) == out.shape[1]
    torch.testing.assert_close(out, torchvision.ops.deform_conv2d(**args, **options), equal_nan=True)
    torch.testing.assert_close(out, reference.deform_conv2d(**args, **options), equal_nan=True)


def test_border_gradient_at_zero_offsets_equals_torchvision(device):
    """Zero offsets with padding 1 (a DeformConv2d at initialisation) put the border taps
    exactly at -1, where the gradient is one-sided from above, as torchvision's."""
    torchvision = pytest.importorskip("torchvision")
    args, options = make_case(2, 4, 7, 6, 5, (3, 3), 1, 1, 1, 1, 1, True, True)
    args["offset"] = torch.zeros_like(args["offset"])
    args["mask"] = torch.full_like(args["mask"], 0.5)
    expected, expected_grads = outputs_and_gradients(torchvision.ops.deform_conv2d, args, options)
    out, grads = outputs_and_gradients(ops.deform_conv2d, {k: v.to(device) for k, v in args.items()}, options)
    torch.testing.assert_close(out.cpu(), expected)
    for name in expected_grads:
        torch.testing.assert_close(grads[name].cpu(), expected_grads[name], msg=lambda m: f"grad {name}: {m}")
    assert bool((expected_grads["offset"][:, 0, 0, 1:-1] != 0).all())  # the taps at y = -1 do get gradient
    _, reference_grads = outputs_and_gradients(reference.deform_conv2d, args, options)
    torch.testing.assert_close(reference_grads["offset"], expected_grads["offset"])


def test_module_offset_gradient_at_initialisation_equals_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from retinaface_ext.nn import DeformConv2d

    torch.manual_seed(0)
    module = DeformConv2d(8, 6, kernel_size=3, padding=1).double()
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    module(x).square().sum().backward()
    ours = module.conv_offset.weight.grad.clone()
    module.zero_grad()
    predicted = module.conv_offset(x)
    out = torchvision.ops.deform_conv2d(
        x, predicted[:, :18], module.weight, module.bias, padding=1, mask=torch.sigmoid(predicted[:, 18:])
    )
    out.square().sum().backward()
    torch.testing.assert_close(ours, module.conv_offset.weight.grad)


def test_double_backward_is_refused():
    args, options = make_case(1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 1, True, True)
    leaves = {k: v.requires_grad_() for k, v in args.items()}
    out = ops.deform_conv2d(**leaves, **options)
    (grad_offset,) = torch.autograd.grad(out.square().sum(), leaves["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        grad_offset.sum().backward()


CRASH_CASES = {
    "zero channels": "torch.randn(1, 0, 5, 5), torch.zeros(1, 18, 5, 5), torch.randn(2, 1, 3, 3)",
    "zero kernel height": "torch.randn(1, 2, 5, 5), torch.zeros(1, 0, 5, 5), torch.randn(2, 2, 0, 3)",
    "zero kernel width": "torch.randn(1, 2, 5, 5), torch.zeros(1, 0, 5, 5), torch.randn(2, 2, 3, 0)",
    "empty image": "torch.randn(1, 2, 0, 5), torch.zeros(1, 18, 0, 5), torch.randn(2, 2, 3, 3)",
}


@pytest.mark.parametrize("how", ["forward", "backward op", "torch.compile"])
@pytest.mark.parametrize("case", CRASH_CASES)
def test_degenerate_shapes_raise_instead_of_crashing(case, how, tmp_path):
    """Each in its own process: these used to kill the interpreter (SIGFPE)."""
    call = {
        "forward": "ops.deform_conv2d(input, offset, weight, padding=1)",
        "backward op": "torch.ops.retinaface_ext.deform_conv2d_backward(torch.zeros(1, 2, 5, 5), input, weight, "
        "offset, None, None, 1, 1, 1, 1, 1, 1)",
        "torch.compile": "torch.compile(ops.deform_conv2d, backend='eager')(input, offset, weight, padding=1)",
    }[how]
    script = textwrap.dedent(f"""
        import torch
        from retinaface_ext import ops
        input, offset, weight = {CRASH_CASES[case]}
        try:
            {call}
        except Exception as error:
            print("raised:", error)
    """)
    # From tmp_path: the installed package, not the source tree (which has no _C in CI).
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, f"crashed with {result.returncode}: {result.stderr[-2000:]}"
    assert "raised:" in result.stdout and "deform_conv2d" in result.stdout, result.stdout + result.stderr[-2000:]


def test_empty_batch_and_zero_output_channels():
    args, options = make_case(2, 4, 7, 7, 6, (3, 3), 1, 1, 1, 1, 2, True, True)
    args["weight"], args["bias"] = args["weight"][:0], args["bias"][:0]
    assert ops.deform_conv2d(**args, **options).shape == (2, 0, 7, 7)


@pytest.mark.parametrize("value", [1.7, "2", (1, 2, 3), (1.0, 1), True])
def test_stride_padding_dilation_must_be_ints(value):
    args, options = make_case(1, 4, 7, 7, 6, (3, 3), 1, 1, 1, 1, 1, True, True)
    with pytest.raises(TypeError, match=r"deform_conv2d: stride must be an int or a pair of ints"):
        ops.deform_conv2d(**args, **{**options, "stride": value})
    with pytest.raises(TypeError, match="deform_conv2d: input must be a torch.Tensor, got list"):
        ops.deform_conv2d(**{**args, "input": [[1.0]]}, **options)


def test_multi_chunk_path_equals_one_chunk(device):
    """The column budget bounds memory by running the batch in chunks (CUDA) or each image
    in tiles of output positions (CPU); a tiny budget makes every image its own chunk and
    every position its own tile, which must change nothing but the GEMMs' shapes (and so
    possibly their rounding)."""
    args, options = make_case(3, 4, 7, 6, 4, (3, 3), 1, 1, 1, 2, 2, True, True)
    args = {k: v.to(device) for k, v in args.items()}
    whole, whole_grads = outputs_and_gradients(ops.deform_conv2d, args, options)
    previous = set_column_budget(1)
    try:
        chunked, chunked_grads = outputs_and_gradients(ops.deform_conv2d, args, options)
    finally:
        set_column_budget(previous)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for name in whole_grads:
        torch.testing.assert_close(chunked_grads[name], whole_grads[name], rtol=1e-12, atol=1e-12)
    expected, _ = outputs_and_gradients(reference.deform_conv2d, args, options)
    torch.testing.assert_close(chunked, expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_image_split_across_threads_on_the_cpu(threads):
    """With fewer images than threads the CPU backward splits each image's tiles into parts,
    each with its own input- and weight-gradient buffer, summed at the end; a part boundary
    must not lose or double a gradient, also when a sample straddles it."""
    args, options = make_case(1, 8, 13, 11, 6, (3, 3), 1, 1, 1, 2, 4, True, True)
    expected, expected_grads = outputs_and_gradients(reference.deform_conv2d, args, options)
    previous_threads, previous_budget = torch.get_num_threads(), set_column_budget(8 * 9 * 10)
    try:
        torch.set_num_threads(threads)
        out, grads = outputs_and_gradients(ops.deform_conv2d, args, options)
    finally:
        torch.set_num_threads(previous_threads)
        set_column_budget(previous_budget)
    torch.testing.assert_close(out, expected)
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], msg=lambda m: f"grad {name}: {m}")
