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


@pytest.mark.parametrize(
    "a, b, message",
    [
        (torch.zeros(3, 3), torch.zeros(2, 4), r"boxes1 must have shape \[N, 4\] or \[B, N, 4\]"),
        (torch.zeros(3, 4), torch.zeros(1, 2, 4), r"boxes2 must have shape \[M, 4\] like boxes1"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 4), "same batch size, got 2 and 3"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), "boxes1 must be a floating point"),
        (torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64), "boxes2 must have the dtype of boxes1"),
    ],
)
def test_bad_input_names_the_argument(a, b, message):
    with pytest.raises(RuntimeError, match=message):
        ops.box_iou(a, b)
