"""match: kernel = batched reference = the seed's per-image match(), bit for bit on the CPU."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seed_reference import seed_batch, seed_jaccard, seed_point_form

from retinaface_ext import ops
from retinaface_ext.ops import reference
from retinaface_ext.ops.match import _check_match_values
from retinaface_ext.priors import prior_boxes

VARIANCES = [0.1, 0.2]


# --- Batches: random and adversarial. ---


def random_batch(batch, max_truths, seed, dtype=torch.float32, min_side=0.004, max_side=0.3, garbage=True):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, max_truths, 2, generator=g, dtype=torch.float64) * 1.1 - 0.05  # partly outside
    side = min_side + torch.rand(batch, max_truths, 2, generator=g, dtype=torch.float64) * (max_side - min_side)
    truths = torch.cat([corner, corner + side], -1)
    landmarks = corner.repeat(1, 1, 5) + torch.rand(
        batch, max_truths, 10, generator=g, dtype=torch.float64
    ) * side.repeat(1, 1, 5)
    labels = torch.where(torch.rand(batch, max_truths, generator=g) < 0.7, 1, -1)
    landmarks[labels == -1] = -1.0
    num_truths = torch.randint(0, max_truths + 1, (batch,), generator=g)
    num_truths[0] = max_truths
    if garbage:  # padding rows hold anything
        pad = torch.arange(max_truths)[None] >= num_truths[:, None]
        truths[pad] = torch.tensor([float("nan"), float("inf"), -5.0, 1e30], dtype=torch.float64)
        landmarks[pad] = float("nan")
        labels[pad] = 7
    return truths.to(dtype), labels, landmarks.to(dtype), num_truths


def assert_all_equal(batch, priors, threshold=0.35):
    truths, labels, landmarks, num_truths = batch
    expected = seed_batch(truths, labels, landmarks, num_truths, priors, threshold)
    ours = ops.match(truths, labels, landmarks, num_truths, priors, threshold, VARIANCES)
    batched_reference = reference.match(truths, labels, landmarks, num_truths, priors, threshold, VARIANCES)
    for name, a, r, e in zip(("loc_t", "conf_t", "landm_t"), ours, batched_reference, expected):
        torch.testing.assert_close(r, e, rtol=0, atol=0, equal_nan=False, msg=lambda m: f"reference {name}: {m}")
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=False, msg=lambda m: f"kernel {name}: {m}")
    return ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, max_truths", [(1, 1), (1, 30), (4, 30), (16, 200), (64, 8)])
def test_random_batches(batch, max_truths, dtype):
    priors = prior_boxes((640, 640), dtype=dtype)
    _, conf_t, _ = assert_all_equal(
        random_batch(batch, max_truths, seed=batch * 1000 + max_truths, dtype=dtype), priors
    )
    assert (conf_t != 0).any()


def test_non_square_image_and_tiny_and_huge_truths():
    priors = prior_boxes((1024, 624))
    assert_all_equal(random_batch(8, 40, seed=1, min_side=0.0005, max_side=1.5), priors)


def test_no_truths_and_all_truths_too_small():
    priors = prior_boxes((640, 640))
    truths, labels, landmarks, num_truths = random_batch(4, 10, seed=2, min_side=0.0005, max_side=0.0015)
    num_truths[1] = 0
    loc_t, conf_t, landm_t = assert_all_equal((truths, labels, landmarks, num_truths), priors)
    # Boxes of about 1 px reach IoU 0.2 with no prior: every target is zero.
    assert not loc_t.any() and not conf_t.any() and not landm_t.any()


def test_duplicate_truths_and_shared_best_prior():
    priors = prior_boxes((640, 640))
    truths, labels, landmarks, num_truths = random_batch(3, 12, seed=3, garbage=False)
    truths[:, 1] = truths[:, 0]  # exact duplicate: the later one wins the shared best prior
    truths[:, 3] = truths[:, 2] + 1e-4  # nearly the same box: very likely the same best prior
    labels[:, 1] = -labels[:, 0]
    num_truths[:] = 12
    assert_all_equal((truths, labels, landmarks, num_truths), priors)


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
    landmarks = torch.rand(1, 2, 10)
    assert_all_equal((truths, labels, landmarks, torch.tensor([2])), priors, threshold=0.0)


def test_landm_targets_of_images_without_targets_are_zero():
    priors = prior_boxes((320, 320))
    truths, labels, landmarks, num_truths = random_batch(2, 3, seed=5, garbage=False)
    truths[1] = torch.tensor([0.5, 0.5, 0.5005, 0.5005])
    _, _, landm_t = ops.match(truths, labels, landmarks, num_truths, priors)
    assert not landm_t[1].any()


def test_opcheck():
    priors = prior_boxes((128, 96))
    truths, labels, landmarks, num_truths = random_batch(3, 5, seed=6, garbage=False)
    torch.library.opcheck(
        torch.ops.retinaface_ext.match.default, (truths, labels, landmarks, num_truths, priors, 0.35, VARIANCES)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(truths=a["truths"][..., :3]), r"truths must have shape \[B, G, 4\]"),
        (lambda a: a.update(labels=a["labels"][:, :2]), r"labels must have shape \[B, G\] = \[2, 3\]"),
        (lambda a: a.update(landmarks=a["landmarks"][..., :8]), r"landmarks must have shape \[B, G, 10\]"),
        (lambda a: a.update(num_truths=a["num_truths"][:1]), r"num_truths must have shape \[B\] = \[2\]"),
        (lambda a: a.update(priors=a["priors"][:, :2]), r"priors must have shape \[P, 4\]"),
        (lambda a: a.update(truths=a["truths"].half()), "truths must be float32 or float64"),
        (lambda a: a.update(landmarks=a["landmarks"].double()), "must share one dtype"),
        (lambda a: a.update(num_truths=a["num_truths"].int()), "num_truths must be int64"),
        (lambda a: a.update(num_truths=torch.tensor([4, 1])), r"num_truths\[0\] = 4 is out of range \[0, 3\]"),
        (lambda a: a.update(num_truths=torch.tensor([1, -1])), r"num_truths\[1\] = -1 is out of range"),
        (lambda a: a["truths"].__setitem__((1, 0, 2), float("nan")), r"truths\[1, 0\] = .* is not finite"),
        (lambda a: a["truths"].__setitem__((0, 1, 2), 0.0), r"truths\[0, 1\] = .* is empty"),
        (lambda a: a["landmarks"].__setitem__((0, 2, 5), float("inf")), r"landmarks\[0, 2\] is not finite"),
        (lambda a: a["priors"].__setitem__((7, 2), 0.0), r"priors\[7\] = .* must be finite with w > 0"),
        (lambda a: a.update(variances=[0.1]), "variances must hold 2 numbers"),
        (lambda a: a.update(threshold=float("nan")), r"threshold must be an IoU in \[0, 1\], got nan"),
        (lambda a: a.update(threshold=-0.1), r"threshold must be an IoU in \[0, 1\], got -0.1"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    truths = torch.tensor([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.8], [0.2, 0.6, 0.3, 0.9]]]).repeat(2, 1, 1)
    args = dict(
        truths=truths,
        labels=torch.ones(2, 3, dtype=torch.long),
        landmarks=torch.rand(2, 3, 10),
        num_truths=torch.tensor([3, 2]),
        priors=prior_boxes((64, 64)).clone(),
        variances=VARIANCES,
    )
    change(args)
    with pytest.raises(RuntimeError, match=message):
        ops.match(**args)
    if any(word in message for word in ("shape", "dtype", "int64", "variances", "float32", "threshold")):
        return
    # The same value check, as the wrapper runs it before the CUDA kernel.
    with pytest.raises(RuntimeError, match=message):
        _check_match_values(args["truths"], args["landmarks"], args["num_truths"], args["priors"])


def test_padding_rows_may_hold_anything():
    priors = prior_boxes((128, 128))
    truths, labels, landmarks, num_truths = random_batch(5, 4, seed=7, garbage=True)
    num_truths[0] = 2
    truths[0, 2:] = float("nan")
    assert_all_equal((truths, labels, landmarks, num_truths), priors)


def test_float_labels_are_accepted():
    priors = prior_boxes((128, 128))
    truths, labels, landmarks, num_truths = random_batch(2, 4, seed=8, garbage=False)
    expected = ops.match(truths, labels, landmarks, num_truths, priors)
    for a, e in zip(ops.match(truths, labels.float(), landmarks, num_truths, priors), expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_equals_cpu(dtype):
    """IoU, forcing and labels match exactly (same IEEE operations, no FMA); the size part
    of loc_t goes through CUDA's log, within an ulp or two of the CPU's."""
    priors = prior_boxes((640, 640), dtype=dtype)
    truths, labels, landmarks, num_truths = random_batch(32, 30, seed=9, dtype=dtype)
    cpu = ops.match(truths, labels, landmarks, num_truths, priors)
    gpu = ops.match(truths.cuda(), labels.cuda(), landmarks.cuda(), num_truths.cuda(), priors.cuda())
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=0, atol=0)
    torch.testing.assert_close(gpu[0].cpu()[..., :2], cpu[0][..., :2], rtol=0, atol=0)
    torch.testing.assert_close(gpu[0].cpu()[..., 2:], cpu[0][..., 2:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_cuda_mismatched_devices_and_bad_values():
    priors = prior_boxes((128, 128), device="cuda")
    truths, labels, landmarks, num_truths = (t.cuda() for t in random_batch(2, 3, seed=10, garbage=False))
    with pytest.raises(RuntimeError, match="priors must be on the device of truths"):
        ops.match(truths, labels, landmarks, num_truths, priors.cpu())
    with pytest.raises(RuntimeError, match=r"num_truths\[0\] = 4 is out of range"):
        ops.match(truths, labels, landmarks, torch.tensor([4, 1], device="cuda"), priors)
    # Without the check, an out-of-range count is clamped on the device: no crash.
    ops.match(truths, labels, landmarks, torch.tensor([4, -1], device="cuda"), priors, check=False)
    torch.cuda.synchronize()


pixel = st.integers(min_value=-4, max_value=68)
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(pixel, pixel, st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, -1])), max_size=12
    ),
    threshold=st.sampled_from([0.0, 0.2, 0.35, 0.5, 0.9]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_pixel_grid_truths_property(device, boxes, threshold, dtype):
    """Truths on the pixel grid of a 64x64 image with coarse priors: exact IoU ties between
    priors and between truths, shared best priors, duplicates, truths outside the image.
    On CUDA, where the tie-breaking is done by other means (atomics), the same targets as
    the CPU's."""
    priors = prior_boxes((64, 64), ((8, 16), (32,)), (8, 16), dtype=dtype)
    G = max(len(boxes), 1)
    truths = torch.zeros(1, G, 4, dtype=dtype)
    labels = torch.ones(1, G, dtype=torch.long)
    for g, (x, y, w, h, label) in enumerate(boxes):
        truths[0, g] = torch.tensor([x, y, x + w, y + h], dtype=dtype) / 64
        labels[0, g] = label
    landmarks = truths.repeat(1, 1, 3)[..., :10] * 0.9
    batch = (truths, labels, landmarks, torch.tensor([len(boxes)]))
    cpu = assert_all_equal(batch, priors, threshold)
    if device == "cuda":
        gpu = ops.match(*(t.cuda() for t in batch), priors.cuda(), threshold, VARIANCES)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=0, atol=0)
        torch.testing.assert_close(gpu[0].cpu()[..., :2], cpu[0][..., :2], rtol=0, atol=0)
        torch.testing.assert_close(gpu[0].cpu()[..., 2:], cpu[0][..., 2:], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=0, atol=0)
