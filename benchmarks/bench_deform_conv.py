"""Deformable convolution: our kernel vs the gather reference vs torchvision, with conv2d
and an unfold + matmul convolution (no deformation: the floor of an im2col approach) of
the same shape. Forward, and forward + backward. One table per shape.
``bench_deform_conv2d_half``: float16 on CUDA at every SSH shape of MobileNet-0.25 at a
640x640 training batch of 32, ours vs torchvision vs conv2d.

    pytest --benchmark benchmarks/bench_deform_conv.py
"""

import pytest
import torch
import torch.nn.functional as F

from retinaface_ext import ops
from retinaface_ext.ops import reference

try:
    import torchvision
except ImportError:  # optional peer
    torchvision = None

# (name, batch, in, out, height, width): the SSH convolutions at a 640x640 training batch
# of 8 (MobileNet-0.25: 64->32 and 16->16 at strides 8, 16, 32; ResNet-50: 256->128 and
# 64->64 at stride 8) and one 1024x624 inference image at stride 8.
SHAPES = [
    ("mnet 64->32 80x80 b8", 8, 64, 32, 80, 80),
    ("mnet 16->16 80x80 b8", 8, 16, 16, 80, 80),
    ("mnet 64->32 40x40 b8", 8, 64, 32, 40, 40),
    ("mnet 16->16 20x20 b8", 8, 16, 16, 20, 20),
    ("r50 256->128 80x80 b8", 8, 256, 128, 80, 80),
    ("r50 64->64 80x80 b8", 8, 64, 64, 80, 80),
    ("infer mnet 64->32 78x128 b1", 1, 64, 32, 78, 128),
]
SLOW_REFERENCE = {"r50 256->128 80x80 b8"}  # the gather reference needs several GB there


# MobileNet-0.25's SSH convolutions (64->32, 64->16, 16->16) at strides 8, 16, 32 of 640x640
HALF_SHAPES = [
    (f"mnet {cin}->{cout} {side}x{side} b32", 32, cin, cout, side, side)
    for side in (80, 40, 20)
    for cin, cout in ((64, 32), (64, 16), (16, 16))
]


def make(batch, cin, cout, height, width, device, grad, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    tensors = dict(
        input=torch.randn(batch, cin, height, width, generator=g),
        offset=torch.randn(batch, 18, height, width, generator=g),
        weight=torch.randn(cout, cin, 3, 3, generator=g) * 0.05,
        bias=torch.randn(cout, generator=g),
        mask=torch.rand(batch, 9, height, width, generator=g),
    )
    return {k: v.to(device=device, dtype=dtype).requires_grad_(grad) for k, v in tensors.items()}


def implementation(impl, t):
    deformable = {"kernel": ops.deform_conv2d, "reference": reference.deform_conv2d}
    if impl in deformable or impl == "torchvision":
        fn = deformable.get(impl) or (torchvision.ops.deform_conv2d if torchvision else None)
        if fn is None:
            pytest.skip("torchvision is not installed")
        return lambda: fn(t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
    if impl == "conv2d":
        return lambda: F.conv2d(t["input"], t["weight"], t["bias"], 1, 1)
    cout, height, width = t["weight"].shape[0], t["input"].shape[2], t["input"].shape[3]
    return lambda: (t["weight"].view(cout, -1) @ F.unfold(t["input"], 3, padding=1)).view(-1, cout, height, width)


@pytest.mark.parametrize("impl", ["kernel", "reference", "torchvision", "conv2d", "unfold_matmul"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def bench_deform_conv2d(benchmark, synchronized, device, shape, backward, impl):
    name, *dims = shape
    if impl == "reference" and name in SLOW_REFERENCE:
        pytest.skip("the gather reference is too large for this shape")
    if backward and name.startswith("infer"):
        pytest.skip("inference shape: forward only")
    benchmark.group = f"deform_conv2d {device} {name} {'forward + backward' if backward else 'forward'}"
    t = make(*dims, device=device, grad=backward)
    forward = implementation(impl, t)
    fn = (lambda: forward().sum().backward()) if backward else forward
    if device == "cpu" and impl in ("torchvision", "reference") and (backward or name in SLOW_REFERENCE):
        benchmark.pedantic(synchronized(fn, device), rounds=2, iterations=1)  # seconds per call
    else:
        benchmark(synchronized(fn, device))


@pytest.mark.parametrize("impl", ["kernel", "torchvision", "conv2d"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=[s[0] for s in HALF_SHAPES])
def bench_deform_conv2d_half(benchmark, synchronized, device, shape, backward, impl):
    if device != "cuda":
        pytest.skip("float16 on CUDA only (the CPU kernel is float32 / float64)")
    name, *dims = shape
    benchmark.group = f"deform_conv2d {device} float16 {name} {'forward + backward' if backward else 'forward'}"
    t = make(*dims, device=device, grad=backward, dtype=torch.float16)
    forward = implementation(impl, t)
    fn = (lambda: forward().sum().backward()) if backward else forward
    benchmark(synchronized(fn, device))
