"""MultiBoxLoss against a transcription of the seed's (its per-image match loop)."""

import pytest
import torch
from seed_reference import SeedMultiBoxLoss

from retinaface_ext.data import collate
from retinaface_ext.loss import MultiBoxLoss, pad_targets
from retinaface_ext.priors import prior_boxes

SIZE = (160, 192)


def real_looking_targets(counts, seed=0, unlabelled=0.3):
    """Per image [G, 15] in [0, 1]: faces of 3 to 60 px on a 160x192 image, landmarks
    inside, some without landmarks (-1), and tiny ones that match no prior."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for count in counts:
        side = (3 + torch.rand(count, 1, generator=g) ** 2 * 57) / torch.tensor([SIZE[1], SIZE[0]])
        corner = torch.rand(count, 2, generator=g) * (1 - side)
        landmarks = corner.repeat(1, 5) + torch.rand(count, 10, generator=g) * side.repeat(1, 5)
        label = torch.where(torch.rand(count, 1, generator=g) < unlabelled, -1.0, 1.0)
        landmarks = torch.where(label > 0, landmarks, torch.full_like(landmarks, -1.0))
        targets.append(torch.cat([corner, corner + side, landmarks, label], 1))
    return targets


def predictions(batch, priors, seed=1):
    g = torch.Generator().manual_seed(seed)
    P = len(priors)
    return tuple(
        (torch.randn(batch, P, k, generator=g) * scale).double().requires_grad_()
        for k, scale in ((4, 1.0), (2, 2.0), (10, 1.0))
    )


@pytest.mark.parametrize("counts", [[3, 0, 12, 1], [0, 0], [25], [5, 7, 2]])
@pytest.mark.parametrize("form", ["list", "batch", "tuple"])
def test_the_loss_and_its_gradients_equal_the_seeds(counts, form):
    priors = prior_boxes(SIZE).double()
    targets = real_looking_targets(counts, seed=len(counts))
    ours_inputs = predictions(len(counts), priors)
    seed_inputs = tuple(p.detach().clone().requires_grad_() for p in ours_inputs)
    if form == "list":
        ours_targets = targets
    elif form == "batch":
        ours_targets = collate([(torch.zeros(3, 4, 4), t) for t in targets])
    else:
        ours_targets = pad_targets(targets)
    ours = MultiBoxLoss()(ours_inputs, priors, ours_targets)
    expected = SeedMultiBoxLoss()(seed_inputs, priors.float(), [t.double() for t in targets])
    for got, want in zip(ours, expected):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want.double(), rtol=1e-5, atol=1e-6)
    sum(ours).backward()
    sum(expected).backward()
    for got, want in zip(ours_inputs, seed_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-7)


def test_positives_and_landmark_positives_are_counted_as_the_seed_does():
    priors = prior_boxes(SIZE)
    targets = real_looking_targets([8, 8], seed=3, unlabelled=1.0)  # no landmarks at all
    loc, conf, landm = (p.float() for p in predictions(2, priors))
    loss_l, loss_c, loss_landm = MultiBoxLoss()((loc, conf, landm), priors, targets)
    assert loss_landm == 0 and loss_l > 0 and loss_c > 0
    empty = MultiBoxLoss()((loc, conf, landm), priors, [torch.zeros(0, 15)] * 2)
    assert empty[0] == 0 and empty[2] == 0 and empty[1] > 0  # the seed's 200 extra negatives


def test_total_weighs_the_box_loss():
    loss = MultiBoxLoss(loc_weight=2.0)
    parts = (torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0))
    assert loss.total(parts) == 7.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        MultiBoxLoss(num_classes=3)
    priors = prior_boxes(SIZE)
    with pytest.raises(ValueError, match="2 images of predictions but 1 of targets"):
        MultiBoxLoss()(tuple(p.float() for p in predictions(2, priors)), priors, real_looking_targets([2]))


def test_half_precision_predictions_are_scored_in_float32():
    priors = prior_boxes(SIZE)
    targets = real_looking_targets([6, 2], seed=5)
    inputs = tuple(p.detach().bfloat16() for p in predictions(2, priors))
    low = MultiBoxLoss()(inputs, priors, targets)
    full = MultiBoxLoss()(tuple(p.float() for p in inputs), priors, targets)
    for a, b in zip(low, full):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_shapes_that_do_not_fit_are_named():
    priors = prior_boxes(SIZE)
    loc, conf, landm = (p.float() for p in predictions(1, priors))
    with pytest.raises(ValueError, match=r"conf must be \[B, P, 2\] with P = "):
        MultiBoxLoss()((loc, conf[:, :-1], landm), priors, real_looking_targets([2]))
    with pytest.raises(ValueError, match=r"targets\[0\] must be \[G, 15\].*got \[15, 14\]"):
        MultiBoxLoss()((loc, conf, landm), priors, [torch.zeros(15, 14)])
