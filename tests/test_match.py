"""match: kernel = batched reference = the seed's per-image match(), bit for bit on the CPU."""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference
from retinaface_ext.ops.match import _check_match_values
from retinaface_ext.priors import prior_boxes

VARIANCES = [0.1, 0.2]


# --- The oracle: a direct transcription of the seed's match() and its box utilities. ---


def seed_point_form(boxes):
    return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def seed_intersect(box_a, box_b):
    A, B = box_a.size(0), box_b.size(0)
    max_xy = torch.min(box_a[:, 2:].unsqueeze(1).expand(A, B, 2), box_b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = torch.max(box_a[:, :2].unsqueeze(1).expand(A, B, 2), box_b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = torch.clamp((max_xy - min_xy), min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def seed_jaccard(box_a, box_b):
    inter = seed_intersect(box_a, box_b)
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])).unsqueeze(1).expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1])).unsqueeze(0).expand_as(inter)
    union = area_a + area_b - inter
    return inter / union


def seed_encode(matched, priors, variances):
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy /= variances[0] * priors[:, 2:]
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def seed_encode_landm(matched, priors, variances):
    matched = torch.reshape(matched, (matched.size(0), 5, 2))
    priors_cx = priors[:, 0].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_cy = priors[:, 1].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_w = priors[:, 2].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_h = priors[:, 3].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors = torch.cat([priors_cx, priors_cy, priors_w, priors_h], dim=2)
    g_cxcy = matched[:, :, :2] - priors[:, :, :2]
    g_cxcy /= variances[0] * priors[:, :, 2:]
    return g_cxcy.reshape(g_cxcy.size(0), -1)


def seed_match(threshold, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx):
    overlaps = seed_jaccard(truths, seed_point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    valid_gt_idx = best_prior_overlap[:, 0] >= 0.2
    best_prior_idx_filter = best_prior_idx[valid_gt_idx, :]
    if best_prior_idx_filter.shape[0] <= 0:
        loc_t[idx] = 0
        conf_t[idx] = 0
        return
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_idx_filter.squeeze_(1)
    best_prior_overlap.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx]
    conf[best_truth_overlap < threshold] = 0
    loc = seed_encode(matches, priors, variances)
    matches_landm = landms[best_truth_idx]
    landm = seed_encode_landm(matches_landm, priors, variances)
    loc_t[idx] = loc
    conf_t[idx] = conf
    landm_t[idx] = landm


def seed_batch(truths, labels, landms, num_truths, priors, threshold=0.35):
    """The seed's per-image loop over a padded batch (landm_t zero where it leaves it unset)."""
    B, P = truths.shape[0], priors.shape[0]
    loc_t = torch.zeros(B, P, 4, dtype=truths.dtype)
    conf_t = torch.zeros(B, P, dtype=torch.long)
    landm_t = torch.zeros(B, P, 10, dtype=truths.dtype)
    for b in range(B):
        n = int(num_truths[b])
        seed_match(
            threshold, truths[b, :n], priors, VARIANCES, labels[b, :n].to(truths.dtype), landms[b, :n],
            loc_t, conf_t, landm_t, b,
        )
    return loc_t, conf_t, landm_t


# --- Batches: random and adversarial. ---


def random_batch(batch, max_truths, seed, dtype=torch.float32, min_side=0.004, max_side=0.3, garbage=True):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, max_truths, 2, generator=g, dtype=torch.float64) * 1.1 - 0.05  # partly outside
    side = min_side + torch.rand(batch, max_truths, 2, generator=g, dtype=torch.float64) * (max_side - min_side)
    truths = torch.cat([corner, corner + side], -1)
    landms = (corner.repeat(1, 1, 5) + torch.rand(batch, max_truths, 10, generator=g, dtype=torch.float64) * side.repeat(1, 1, 5))
    labels = torch.where(torch.rand(batch, max_truths, generator=g) < 0.7, 1, -1)
    landms[labels == -1] = -1.0
    num_truths = torch.randint(0, max_truths + 1, (batch,), generator=g)
    num_truths[0] = max_truths
    if garbage:  # padding rows hold anything
        pad = torch.arange(max_truths)[None] >= num_truths[:, None]
        truths[pad] = torch.tensor([float("nan"), float("inf"), -5.0, 1e30], dtype=torch.float64)
        landms[pad] = float("nan")
        labels[pad] = 7
    return truths.to(dtype), labels, landms.to(dtype), num_truths


def assert_all_equal(batch, priors, threshold=0.35):
    truths, labels, landms, num_truths = batch
    expected = seed_batch(truths, labels, landms, num_truths, priors, threshold)
    ours = ops.match(truths, labels, landms, num_truths, priors, threshold, VARIANCES)
    batched_reference = reference.match(truths, labels, landms, num_truths, priors, threshold, VARIANCES)
    for name, a, r, e in zip(("loc_t", "conf_t", "landm_t"), ours, batched_reference, expected):
        torch.testing.assert_close(r, e, rtol=0, atol=0, equal_nan=False, msg=lambda m: f"reference {name}: {m}")
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=False, msg=lambda m: f"kernel {name}: {m}")
    return ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, max_truths", [(1, 1), (1, 30), (4, 30), (16, 200), (64, 8)])
def test_random_batches(batch, max_truths, dtype):
    priors = prior_boxes((640, 640), dtype=dtype)
    _, conf_t, _ = assert_all_equal(random_batch(batch, max_truths, seed=batch * 1000 + max_truths, dtype=dtype), priors)
    assert (conf_t != 0).any()


def test_non_square_image_and_tiny_and_huge_truths():
    priors = prior_boxes((1024, 624))
    assert_all_equal(random_batch(8, 40, seed=1, min_side=0.0005, max_side=1.5), priors)


def test_no_truths_and_all_truths_too_small():
    priors = prior_boxes((640, 640))
    truths, labels, landms, num_truths = random_batch(4, 10, seed=2, min_side=0.0005, max_side=0.0015)
    num_truths[1] = 0
    loc_t, conf_t, landm_t = assert_all_equal((truths, labels, landms, num_truths), priors)
    # Boxes of about 1 px reach IoU 0.2 with no prior: every target is zero.
    assert not loc_t.any() and not conf_t.any() and not landm_t.any()


def test_duplicate_truths_and_shared_best_prior():
    priors = prior_boxes((640, 640))
    truths, labels, landms, num_truths = random_batch(3, 12, seed=3, garbage=False)
    truths[:, 1] = truths[:, 0]  # exact duplicate: the later one wins the shared best prior
    truths[:, 3] = truths[:, 2] + 1e-4  # nearly the same box: very likely the same best prior
    labels[:, 1] = -labels[:, 0]
    num_truths[:] = 12
    assert_all_equal((truths, labels, landms, num_truths), priors)


def test_overlap_exactly_at_threshold():
    priors = prior_boxes((640, 640))
    batch = random_batch(2, 6, seed=4, garbage=False)
    truths, _, _, num_truths = batch
    overlaps = seed_jaccard(truths[0, : num_truths[0]], seed_point_form(priors))
    candidates = overlaps[(overlaps > 0.25) & (overlaps < 0.6)]
    threshold = float(candidates[len(candidates) // 2])  # an overlap value that occurs: not < it
    assert_all_equal(batch, priors, threshold)


def test_unforced_truth_still_claims_its_best_prior():
    """A truth below 0.2 forces nothing but, in the seed's loop, still takes its best prior's index."""
    priors = prior_boxes((64, 64), ((16,),), (8,))
    big = torch.tensor([[0.0, 0.0, 0.25, 0.25]])
    tiny = torch.tensor([[0.05, 0.05, 0.06, 0.06]])
    truths = torch.cat([big, tiny])[None]
    labels = torch.tensor([[1, -1]])
    landms = torch.rand(1, 2, 10)
    assert_all_equal((truths, labels, landms, torch.tensor([2])), priors, threshold=0.0)


def test_landm_targets_of_images_without_targets_are_zero():
    priors = prior_boxes((320, 320))
    truths, labels, landms, num_truths = random_batch(2, 3, seed=5, garbage=False)
    truths[1] = torch.tensor([0.5, 0.5, 0.5005, 0.5005])
    _, _, landm_t = ops.match(truths, labels, landms, num_truths, priors)
    assert not landm_t[1].any()


def test_opcheck():
    priors = prior_boxes((128, 96))
    truths, labels, landms, num_truths = random_batch(3, 5, seed=6, garbage=False)
    torch.library.opcheck(
        torch.ops.retinaface_ext.match.default, (truths, labels, landms, num_truths, priors, 0.35, VARIANCES)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(truths=a["truths"][..., :3]), r"truths must have shape \[B, G, 4\]"),
        (lambda a: a.update(labels=a["labels"][:, :2]), r"labels must have shape \[B, G\] = \[2, 3\]"),
        (lambda a: a.update(landms=a["landms"][..., :8]), r"landms must have shape \[B, G, 10\]"),
        (lambda a: a.update(num_truths=a["num_truths"][:1]), r"num_truths must have shape \[B\] = \[2\]"),
        (lambda a: a.update(priors=a["priors"][:, :2]), r"priors must have shape \[P, 4\]"),
        (lambda a: a.update(truths=a["truths"].half()), "truths must be float32 or float64"),
        (lambda a: a.update(landms=a["landms"].double()), "must share one dtype"),
        (lambda a: a.update(num_truths=a["num_truths"].int()), "num_truths must be int64"),
        (lambda a: a.update(num_truths=torch.tensor([4, 1])), r"num_truths\[0\] = 4 is out of range \[0, 3\]"),
        (lambda a: a.update(num_truths=torch.tensor([1, -1])), r"num_truths\[1\] = -1 is out of range"),
        (lambda a: a["truths"].__setitem__((1, 0, 2), float("nan")), r"truths\[1, 0\] = .* is not finite"),
        (lambda a: a["truths"].__setitem__((0, 1, 2), 0.0), r"truths\[0, 1\] = .* is empty"),
        (lambda a: a["landms"].__setitem__((0, 2, 5), float("inf")), r"landms\[0, 2\] is not finite"),
        (lambda a: a["priors"].__setitem__((7, 2), 0.0), r"priors\[7\] = .* must be finite with w > 0"),
        (lambda a: a.update(variances=[0.1]), "variances must hold 2 numbers"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    truths = torch.tensor([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.8], [0.2, 0.6, 0.3, 0.9]]]).repeat(2, 1, 1)
    args = dict(
        truths=truths, labels=torch.ones(2, 3, dtype=torch.long), landms=torch.rand(2, 3, 10),
        num_truths=torch.tensor([3, 2]), priors=prior_boxes((64, 64)).clone(), variances=VARIANCES,
    )
    change(args)
    with pytest.raises(RuntimeError, match=message):
        ops.match(**args)
    if "shape" in message or "dtype" in message or "int64" in message or "variances" in message or "float32" in message:
        return
    # The same value check, as the wrapper runs it before the CUDA kernel.
    with pytest.raises(RuntimeError, match=message):
        _check_match_values(args["truths"], args["landms"], args["num_truths"], args["priors"])


def test_padding_rows_may_hold_anything():
    priors = prior_boxes((128, 128))
    truths, labels, landms, num_truths = random_batch(5, 4, seed=7, garbage=True)
    num_truths[0] = 2
    truths[0, 2:] = float("nan")
    assert_all_equal((truths, labels, landms, num_truths), priors)


def test_float_labels_are_accepted():
    priors = prior_boxes((128, 128))
    truths, labels, landms, num_truths = random_batch(2, 4, seed=8, garbage=False)
    expected = ops.match(truths, labels, landms, num_truths, priors)
    for a, e in zip(ops.match(truths, labels.float(), landms, num_truths, priors), expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_equals_cpu(dtype):
    """IoU, forcing and labels match exactly (same IEEE operations, no FMA); the size part
    of loc_t goes through CUDA's log, within an ulp or two of the CPU's."""
    priors = prior_boxes((640, 640), dtype=dtype)
    truths, labels, landms, num_truths = random_batch(32, 30, seed=9, dtype=dtype)
    cpu = ops.match(truths, labels, landms, num_truths, priors)
    gpu = ops.match(truths.cuda(), labels.cuda(), landms.cuda(), num_truths.cuda(), priors.cuda())
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=0, atol=0)
    torch.testing.assert_close(gpu[0].cpu()[..., :2], cpu[0][..., :2], rtol=0, atol=0)
    torch.testing.assert_close(gpu[0].cpu()[..., 2:], cpu[0][..., 2:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=0, atol=0)
