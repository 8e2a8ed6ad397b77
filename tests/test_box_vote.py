"""box_vote: kernel = reference (insightface's bbox_vote per category, in our words) on
random and adversarial detections: ties, identical boxes, one box, empty, zero scores,
categories; opcheck; every error path."""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference


def detections(n, seed=0, faces=6, categories=1, dtype=torch.float32, device="cpu"):
    """Boxes jittered around a few faces (as the levels and flips of one image give them),
    scores in (0, 1), five landmarks inside each box, ``categories`` images."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(faces, 2, generator=g, dtype=torch.float64) * 400 + 50
    sizes = torch.rand(faces, 1, generator=g, dtype=torch.float64) * 60 + 10
    pick = torch.randint(0, faces, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g, dtype=torch.float64) * sizes[pick] * 0.1
    corners = torch.cat([centres[pick] - sizes[pick] / 2, centres[pick] + sizes[pick] / 2], 1) + jitter
    landmarks = corners[:, :2].repeat(1, 5) + torch.rand(n, 10, generator=g, dtype=torch.float64) * sizes[pick]
    scores = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    idxs = torch.randint(0, categories, (n,), generator=g)
    return tuple(t.to(device) for t in (corners.to(dtype), scores.to(dtype), landmarks.to(dtype), idxs))


def same_as_reference(boxes, scores, landmarks, idxs, threshold):
    got = ops.box_vote(boxes, scores, landmarks, threshold, idxs)
    expected = reference.box_vote(boxes.cpu(), scores.cpu(), landmarks.cpu(), idxs.cpu(), threshold)
    assert [t.device for t in got] == [boxes.device] * 4
    torch.testing.assert_close(got[3].cpu(), expected[3], rtol=0, atol=0)
    torch.testing.assert_close(got[1].cpu(), expected[1], rtol=0, atol=0)
    torch.testing.assert_close(got[0].cpu(), expected[0])
    torch.testing.assert_close(got[2].cpu(), expected[2])
    return got


@pytest.mark.parametrize("n", [1, 2, 10, 300, 2000])
@pytest.mark.parametrize("categories", [1, 3])
def test_random_detections(device, n, categories):
    boxes, scores, landmarks, idxs = detections(n, seed=n + categories, categories=categories, device=device)
    voted = same_as_reference(boxes, scores, landmarks, idxs, 0.4)
    assert 0 < len(voted[0]) <= n
    for c in idxs.unique().tolist():  # by category, each best first
        mine = voted[1][voted[3] == c]
        assert bool((mine[1:] <= mine[:-1]).all())
    assert bool((voted[3][1:] >= voted[3][:-1]).all())


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thresholds_and_dtypes(device, threshold, dtype):
    same_as_reference(*detections(500, seed=3, dtype=dtype, device=device), threshold)


def test_a_group_is_the_score_weighted_mean_and_keeps_the_best_score(device):
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [100, 100, 110, 110]], dtype=torch.float64, device=device)
    scores = torch.tensor([0.5, 0.9, 0.2], dtype=torch.float64, device=device)
    landmarks = boxes[:, :2].repeat(1, 5)
    voted_boxes, voted_scores, voted_landmarks, _ = same_as_reference(
        boxes, scores, landmarks, torch.zeros(3, dtype=torch.long, device=device), 0.5
    )
    expected = (0.5 * boxes[0] + 0.9 * boxes[1]) / 1.4
    torch.testing.assert_close(voted_boxes[0], expected)
    torch.testing.assert_close(voted_landmarks[0], expected[:2].repeat(5))
    assert voted_scores.tolist() == [0.9, 0.2]  # the head's; the lone box stays as it is
    torch.testing.assert_close(voted_boxes[1], boxes[2])


def test_iou_exactly_at_the_threshold_joins(device):
    # Box 1 overlaps box 0 with IoU exactly 0.5 (50 / 100): it votes at 0.5, not at 0.5001.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float64, device=device)
    scores = torch.tensor([0.8, 0.6], dtype=torch.float64, device=device)
    none, idxs = torch.zeros(2, 0, dtype=torch.float64, device=device), torch.zeros(2, dtype=torch.long, device=device)
    assert len(same_as_reference(boxes, scores, none, idxs, 0.5)[0]) == 1
    assert len(same_as_reference(boxes, scores, none, idxs, 0.5001)[0]) == 2


def test_ties_identical_boxes_zero_scores_and_empty_boxes(device):
    box = torch.tensor([[5.0, 5.0, 25.0, 25.0]], device=device)
    boxes = torch.cat([box, box, box + 1, box + 100, torch.tensor([[50.0, 50.0, 50.0, 60.0]], device=device)])
    landmarks = torch.arange(50, dtype=torch.float32, device=device).reshape(5, 10)
    idxs = torch.zeros(5, dtype=torch.long, device=device)
    tied = torch.full((5,), 0.5, device=device)
    voted = same_as_reference(boxes, tied, landmarks, idxs, 0.4)
    assert len(voted[0]) == 3  # the three overlapping boxes, the far one, the empty one alone
    zero = torch.zeros(5, device=device)  # the weights sum to 0: each group keeps its head
    voted = same_as_reference(boxes, zero, landmarks, idxs, 0.4)
    torch.testing.assert_close(voted[0][0], boxes[0])


def test_one_box_and_none(device):
    boxes, scores, landmarks, idxs = detections(1, device=device)
    voted = same_as_reference(boxes, scores, landmarks, idxs, 0.4)
    torch.testing.assert_close(voted[0], boxes)
    empty = ops.box_vote(boxes[:0], scores[:0], landmarks[:0], 0.4, idxs[:0])
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0, 10), (0,)]
    without = ops.box_vote(boxes, scores)  # no landmarks, one category
    assert without[2].shape == (1, 0) and without[3].tolist() == [0]


def test_opcheck(device):
    boxes, scores, landmarks, idxs = detections(40, seed=5, categories=2, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.retinaface_ext.box_vote.default, (boxes, scores, landmarks, idxs, 0.4))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(boxes=torch.rand(4, 3)), "boxes must have shape"),
        (dict(scores=torch.rand(3)), "scores must have shape"),
        (dict(landmarks=torch.rand(4)), "landmarks must have shape"),
        (dict(idxs=torch.zeros(3, dtype=torch.long)), "idxs must have shape"),
        (dict(scores=torch.rand(4).double()), "scores must have the dtype of boxes"),
        (dict(threshold=1.5), "iou_threshold must be an IoU in"),
        (dict(threshold=float("nan")), "iou_threshold must be an IoU in"),
        (dict(scores=torch.tensor([0.5, float("nan"), 0.2, 0.1])), r"scores\[1\] = nan must be finite"),
        (dict(scores=torch.tensor([0.5, -0.1, 0.2, 0.1])), r"scores\[1\] = -0.1 must be finite and >= 0"),
        (dict(boxes=torch.tensor([[0, 0, 1, 1]] * 3 + [[0, 0, float("inf"), 1]])), r"boxes\[3\] = .* must be finite"),
    ],
)
def test_bad_arguments_are_named(change, message):
    args = dict(zip(("boxes", "scores", "landmarks", "idxs"), detections(4)), threshold=0.4)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        ops.box_vote(args["boxes"], args["scores"], args["landmarks"], args["threshold"], args["idxs"])
    with pytest.raises(TypeError, match="idxs must hold integer categories"):
        ops.box_vote(*detections(4)[:3], 0.4, torch.zeros(4))
