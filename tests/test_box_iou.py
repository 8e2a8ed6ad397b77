"""box_iou: kernel = reference = torchvision."""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference


def random_boxes(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 100
    size = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 50
    return torch.cat([corner, corner + size], -1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", [(0, 5), (5, 0), (1, 1), (37, 300), (500, 16)])
def test_equals_reference_and_torchvision(device, dtype, n, m):
    a, b = random_boxes((n,), 1, dtype).to(device), random_boxes((m,), 2, dtype).to(device)
    ours = ops.box_iou(a, b)
    assert ours.shape == (n, m) and ours.dtype == dtype
    torch.testing.assert_close(ours, reference.box_iou(a, b), rtol=0, atol=0)
    torchvision = pytest.importorskip("torchvision")
    torch.testing.assert_close(ours.cpu(), torchvision.ops.box_iou(a.cpu(), b.cpu()), rtol=0, atol=0)


def test_batched_and_non_contiguous(device):
    a, b = random_boxes((4, 20), 3).to(device), random_boxes((4, 30), 4).to(device)
    ours = ops.box_iou(a, b.transpose(0, 1).contiguous().transpose(0, 1))
    assert ours.shape == (4, 20, 30)
    torch.testing.assert_close(ours, reference.box_iou(a, b), rtol=0, atol=0)
    torch.testing.assert_close(ours[2], ops.box_iou(a[2], b[2]), rtol=0, atol=0)


def test_identical_disjoint_and_degenerate():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 5.0, 5.0, 5.0]])
    iou = ops.box_iou(boxes, boxes)
    assert iou[0, 0] == 1 and iou[0, 1] == 0 and iou[2, 0] == 0
    torch.testing.assert_close(iou, reference.box_iou(boxes, boxes), rtol=0, atol=0, equal_nan=True)


def test_opcheck(device):
    a, b = random_boxes((6,), 5).to(device), random_boxes((7,), 6).to(device)
    torch.library.opcheck(torch.ops.retinaface_ext.box_iou.default, (a, b))
    torch.library.opcheck(torch.ops.retinaface_ext.box_iou.default, (a[None], b[None]))
    torch.library.opcheck(torch.ops.retinaface_ext.box_iou.default, (a.double().requires_grad_(), b.double()))


@pytest.mark.parametrize(
    "a, b, message",
    [
        (torch.zeros(3, 3), torch.zeros(2, 4), r"boxes1 must have shape \[N, 4\] or \[B, N, 4\]"),
        (torch.zeros(3, 4), torch.zeros(1, 2, 4), r"boxes2 must have shape \[M, 4\] like boxes1"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 4), "same batch size, got 2 and 3"),
    ],
)
def test_bad_input_names_the_argument(a, b, message):
    with pytest.raises(RuntimeError, match=message):
        ops.box_iou(a, b)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.uint8, torch.float16, torch.bfloat16])
def test_every_dtype_torchvision_takes(device, dtype):
    a = torch.tensor([[0, 0, 100, 100], [0, 0, 25, 25]], dtype=dtype, device=device)
    b = torch.tensor([[0, 0, 50, 50]], dtype=dtype, device=device)
    ours = ops.box_iou(a, b)
    assert ours.dtype == torch.float32
    assert ours.flatten().tolist() == [0.25, 0.25]
    torchvision = pytest.importorskip("torchvision")
    random_a, random_b = (random_boxes((40,), seed, torch.float64).round().to(dtype) for seed in (7, 8))
    if dtype == torch.uint8:  # torchvision subtracts uint8 corners before it upcasts: they wrap around
        expected = torchvision.ops.box_iou(random_a.int(), random_b.int())
    else:
        expected = torchvision.ops.box_iou(random_a, random_b)
    # torchvision subtracts half-precision corners before it upcasts; we upcast first.
    tolerance = dict(rtol=0, atol=0) if not dtype.is_floating_point else dict(rtol=0, atol=2e-3)
    torch.testing.assert_close(
        ops.box_iou(random_a.to(device), random_b.to(device)).cpu(), expected, equal_nan=True, **tolerance
    )  # 0 / 0 for empty rounded boxes


def test_mixed_dtypes_promote_like_torchvision():
    torchvision = pytest.importorskip("torchvision")
    a = random_boxes((5,), 9, torch.float64)
    b = random_boxes((6,), 10, torch.float32)
    ours = ops.box_iou(a, b.round().int())
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b.round().int()), rtol=0, atol=0)


def test_gradients_equal_torchvision_and_gradcheck(device):
    torchvision = pytest.importorskip("torchvision")
    a, b = random_boxes((6,), 11, torch.float64), random_boxes((5,), 12, torch.float64)
    b[0] = a[0]  # ties between the corners, IoU 1
    b[1, :2] = a[1, 2:]  # touching boxes
    a_ours, b_ours = a.clone().to(device).requires_grad_(), b.clone().to(device).requires_grad_()
    a_tv, b_tv = a.clone().requires_grad_(), b.clone().requires_grad_()
    grad = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ops.box_iou(a_ours, b_ours).backward(grad.to(device))
    torchvision.ops.box_iou(a_tv, b_tv).backward(grad)
    assert a_ours.grad is not None and b_ours.grad is not None
    torch.testing.assert_close(a_ours.grad.cpu(), a_tv.grad)
    torch.testing.assert_close(b_ours.grad.cpu(), b_tv.grad)
    c, d = random_boxes((3, 4), 13, torch.float64), random_boxes((3, 2), 14, torch.float64)
    inputs = (c.to(device).requires_grad_(), d.to(device).requires_grad_())
    assert torch.autograd.gradcheck(ops.box_iou, inputs)
    assert torch.autograd.gradgradcheck(ops.box_iou, inputs)


def test_half_boxes_get_half_gradients():
    a = random_boxes((4,), 15, torch.float16).requires_grad_()
    b = random_boxes((3,), 16, torch.float16)
    ops.box_iou(a, b).sum().backward()
    assert a.grad is not None and a.grad.dtype == torch.float16


def test_not_a_tensor_is_named():
    with pytest.raises(TypeError, match="box_iou: boxes1 must be a torch.Tensor, got list"):
        ops.box_iou([[0, 0, 1, 1]], torch.zeros(1, 4))
