"""Every CUDA kernel runs on the current stream, as PyTorch's own ops do: inputs made on a
side stream after a long GPU sleep are only ready on that stream, so a kernel launched on
any other stream reads zeros and this test fails."""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.priors import prior_boxes

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]

SLEEP_CYCLES = 200_000_000  # about 0.1 s of GPU time: long enough for a wrong stream to race ahead


def late(*tensors):
    """Copies of ``tensors`` (already on the GPU) that hold zeros until the current stream,
    after a long sleep, fills them in."""
    copies = [torch.zeros_like(t) for t in tensors]
    torch.cuda._sleep(SLEEP_CYCLES)
    for copy, tensor in zip(copies, tensors):
        copy.copy_(tensor)
    return copies


def on_side_stream(fn, *tensors):
    tensors = [t.cuda() for t in tensors]
    torch.cuda.synchronize()
    expected = fn(*tensors)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        result = fn(*late(*tensors))
    side.synchronize()
    return result, expected


def assert_same(result, expected):
    if isinstance(result, torch.Tensor):
        result, expected = (result,), (expected,)
    for a, b in zip(result, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nms_and_box_iou(boxes_factory):
    boxes, scores = boxes_factory("crowd", 3000, seed=0)
    idxs = torch.arange(3000) % 3
    assert_same(*on_side_stream(lambda b, s: ops.nms(b, s, 0.4), boxes, scores))
    assert_same(*on_side_stream(lambda b, s, i: ops.batched_nms(b, s, i, 0.4), boxes, scores, idxs))
    assert_same(*on_side_stream(ops.box_iou, boxes[:200], boxes[200:500]))


def test_match_and_decode_detections():
    priors = prior_boxes((320, 320))
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(4, 10, 2, generator=g) * 0.8
    truths = torch.cat([corner, corner + 0.05 + torch.rand(4, 10, 2, generator=g) * 0.15], -1)
    labels, landmarks = torch.ones(4, 10, dtype=torch.long), truths.repeat(1, 1, 3)[..., :10]
    num_truths = torch.tensor([10, 3, 0, 7])
    assert_same(*on_side_stream(lambda *a: ops.match(*a), truths, labels, landmarks, num_truths, priors))
    loc, landm = torch.randn(4, len(priors), 4, generator=g), torch.randn(4, len(priors), 10, generator=g)
    conf = torch.softmax(torch.randn(4, len(priors), 2, generator=g) * 3, -1)
    assert_same(*on_side_stream(lambda *a: ops.decode_detections(*a, score_threshold=0.5), loc, conf, landm, priors))


def test_deform_conv2d_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    x, offset = torch.randn(2, 8, 12, 10, generator=g), torch.randn(2, 18, 12, 10, generator=g)
    weight, mask = torch.randn(4, 8, 3, 3, generator=g), torch.rand(2, 9, 12, 10, generator=g)

    def forward_backward(x, offset, weight, mask):
        leaves = [t.clone().requires_grad_() for t in (x, offset, weight, mask)]
        out = ops.deform_conv2d(leaves[0], leaves[1], leaves[2], None, 1, 1, 1, leaves[3])
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    result, expected = on_side_stream(forward_backward, x, offset, weight, mask)
    for a, b in zip(result, expected):  # atomics in the backward: sums in any order
        torch.testing.assert_close(a, b)
