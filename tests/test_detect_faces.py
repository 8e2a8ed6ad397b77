"""detect_faces: kernel = reference (image by image: softmax, decode, top_k, NMS, keep_top_k)
on network outputs and on adversarial ones; the non-finite codes; errors."""

import pytest
import torch
from shared_data import CROWD, HAVE_SHARED, WEIGHTS

from retinaface_ext import RetinaFace, ops
from retinaface_ext.ops import reference
from retinaface_ext.ops.detect_faces import NON_FINITE_CANDIDATES, NON_FINITE_SCORES
from retinaface_ext.priors import prior_boxes

CANVAS = (64, 96)


def outputs(batch, priors, seed=0, spread=3.0, dtype=torch.float32):
    """Network-like outputs: offsets near 0, logits with a spread of face scores."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, len(priors), 4, generator=g) * 0.5
    logits = torch.randn(batch, len(priors), 2, generator=g) * spread
    landm = torch.randn(batch, len(priors), 10, generator=g) * 0.5
    return tuple(t.to(dtype) for t in (loc, logits, landm))


def same_as_reference(loc, logits, landm, priors, canvas, **settings):
    got = ops.detect_faces(loc, logits, landm, priors, canvas, **settings)
    expected = reference.detect_faces(
        loc.cpu(),
        logits.cpu(),
        landm.cpu(),
        priors.cpu(),
        canvas,
        **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in settings.items()},
    )
    boxes, scores, landmarks, counts = (t.cpu() for t in got)
    assert counts.tolist() == expected[3].tolist()
    # The CPU kernel's exp (in the sigmoid and the decoding) may differ from torch's
    # vectorised one in the last bit.
    torch.testing.assert_close(scores, expected[1])
    torch.testing.assert_close(boxes, expected[0])
    torch.testing.assert_close(landmarks, expected[2], rtol=0, atol=0)
    assert boxes.shape == (max(0, sum(c for c in counts.tolist() if c > 0)), 4)
    return got


@pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")
def test_the_crowd_photo_in_batches(device):
    import cv2

    image = cv2.imread(str(CROWD))
    model = RetinaFace.from_checkpoint(WEIGHTS).eval()
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - torch.tensor([104.0, 117.0, 123.0])[:, None, None])[None]
    with torch.inference_mode():
        loc, logits, landm = model(x)
    canvas = image.shape[:2]
    priors = prior_boxes(canvas)
    loc, logits, landm = (torch.cat([t, t.flip(1)]).to(device) for t in (loc, logits, landm))
    priors = priors.to(device)
    counts = same_as_reference(loc, logits, landm, priors, canvas)[3]
    assert counts[0] > 100  # about 25 faces, and the low-scored rest of the 0.02 threshold
    inside = torch.ones(2, len(priors), device=device)
    inside[1, :5000] = 0
    factor = torch.tensor([1.0, 0.75], device=device)
    same_as_reference(loc, logits, landm, priors, canvas, inside=inside, factor=factor)
    limited = same_as_reference(loc, logits, landm, priors, canvas, top_k=300, keep_top_k=50, factor=factor)
    assert limited[3].max() == 50 and bool((limited[3] <= counts).all())


@pytest.mark.parametrize(
    "score_threshold, top_k, nms_threshold, keep_top_k",
    [(0.02, 5000, 0.4, 750), (0.0, 7, 0.4, 750), (0.5, 5000, 0.0, 3), (0.9, 1, 1.0, 1), (1.0, 5000, 0.4, 750)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_settings_and_dtypes(device, score_threshold, top_k, nms_threshold, keep_top_k, dtype):
    priors = prior_boxes(CANVAS, dtype=dtype, device=device)
    loc, logits, landm = (t.to(device) for t in outputs(3, priors, seed=int(score_threshold * 10) + top_k, dtype=dtype))
    counts = same_as_reference(
        loc,
        logits,
        landm,
        priors,
        CANVAS,
        score_threshold=score_threshold,
        top_k=top_k,
        nms_threshold=nms_threshold,
        keep_top_k=keep_top_k,
    )[3]
    assert all(0 <= c <= min(top_k, keep_top_k) for c in counts.tolist())
    if score_threshold == 1.0:
        assert counts.tolist() == [0, 0, 0]


@pytest.mark.parametrize("score_threshold", [1e-7, 0.02, 0.5, 0.99, 0.9995])
def test_scores_just_around_the_threshold(device, score_threshold):
    """Face scores a hair above and below the threshold (the CPU kernel skips the priors
    that are clearly below it by their logits)."""
    priors = prior_boxes(CANVAS, device=device)
    loc, logits, landm = (t.to(device) for t in outputs(2, priors, seed=6))
    g = torch.Generator().manual_seed(7)
    step = torch.rand(2, len(priors), generator=g) * 0.02 + 1e-4
    side = torch.where(torch.rand(2, len(priors), generator=g) < 0.5, -1.0, 1.0)
    logit = torch.logit(torch.tensor(score_threshold, dtype=torch.float64)).item()
    logits[..., 0] = 0.0
    logits[..., 1] = (logit + side * step).to(device)
    counts = same_as_reference(
        loc,
        logits,
        landm,
        priors,
        CANVAS,
        score_threshold=score_threshold,
        nms_threshold=1.0,
        top_k=len(priors),
        keep_top_k=len(priors),
    )[3]
    above = (side > 0).sum(1)
    assert counts.tolist() == above.tolist()  # NMS at 1.0 keeps every distinct box


def test_equal_scores_keep_the_lower_prior(device):
    priors = prior_boxes(CANVAS, device=device)
    loc = torch.zeros(1, len(priors), 4, device=device)  # every box its prior: duplicates at each position
    logits = torch.zeros(1, len(priors), 2, device=device)  # every score 0.5
    landm = torch.zeros(1, len(priors), 10, device=device)
    boxes, scores, _, counts = same_as_reference(loc, logits, landm, priors, CANVAS, top_k=40, nms_threshold=0.3)
    assert bool((scores == 0.5).all())
    # The 40 first priors (the top-left cells) went to NMS: each kept box is the first of its spot.
    kept_priors = prior_boxes(CANVAS, device=device)[:40]
    assert counts.item() == len(boxes) <= 40
    first = (kept_priors[:, :2] * torch.tensor([CANVAS[1], CANVAS[0]], device=device))[0]
    torch.testing.assert_close((boxes[0, :2] + boxes[0, 2:]) / 2, first)


def test_empty_batches_and_images(device):
    priors = prior_boxes(CANVAS, device=device)
    loc, logits, landm = (t[:0].to(device) for t in outputs(1, priors))
    boxes, scores, landmarks, counts = same_as_reference(loc, logits, landm, priors, CANVAS)
    assert boxes.shape == (0, 4) and landmarks.shape == (0, 10) and counts.shape == (0,)
    loc, logits, landm = (t.to(device) for t in outputs(2, priors))
    logits[0, :, 1] = -50.0  # image 0: no candidate
    assert same_as_reference(loc, logits, landm, priors, CANVAS)[3][0] == 0


def test_non_finite_images_are_reported_and_keep_nothing(device):
    priors = prior_boxes(CANVAS, device=device)
    loc, logits, landm = (t.to(device) for t in outputs(4, priors, seed=5))
    logits[1, 3, 0] = float("nan")  # image 1: a NaN score (never a candidate, so it would vanish)
    logits[2, 9] = torch.tensor([-10.0, 10.0])
    loc[2, 9, 3] = 1e4  # image 2: a candidate whose height overflows
    loc[3, 11, 2], logits[3, 11] = float("inf"), torch.tensor([10.0, -10.0])  # image 3: not a candidate
    counts = same_as_reference(loc, logits, landm, priors, CANVAS)[3].tolist()
    assert counts[1:3] == [NON_FINITE_SCORES, NON_FINITE_CANDIDATES] and counts[0] > 0 and counts[3] > 0


def test_opcheck(device):
    priors = prior_boxes(CANVAS, device=device)
    loc, logits, landm = (t.to(device) for t in outputs(2, priors, seed=2))
    factor = torch.tensor([1.0, 0.5], device=device)
    torch.library.opcheck(
        torch.ops.retinaface_ext.detect_faces.default,
        (loc, logits, landm, priors, None, factor, *CANVAS, [0.1, 0.2], 0.3, 50, 0.4, 20),
    )


def test_works_under_torch_compile():
    priors = prior_boxes(CANVAS)
    loc, logits, landm = outputs(2, priors, seed=3)

    @torch.compile(backend="eager", fullgraph=True)
    def detect(loc, logits, landm):
        boxes, scores, landmarks, counts = ops.detect_faces(loc, logits, landm, priors, CANVAS)
        return boxes * 2, counts

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        boxes, counts = detect(loc, logits, landm)
    expected = reference.detect_faces(loc, logits, landm, priors, CANVAS)
    torch.testing.assert_close(boxes, expected[0] * 2)
    assert counts.tolist() == expected[3].tolist()


def arguments(**changes):
    priors = prior_boxes(CANVAS)
    loc, logits, landm = outputs(2, priors)
    args = {"loc": loc, "logits": logits, "landm": landm, "priors": priors, "canvas_size": CANVAS}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"priors": torch.zeros(10, 3)}, r"priors must have shape \[P, 4\]"),
        ({"loc": torch.zeros(2, 5, 4)}, r"loc must have shape \[B, P, 4\] with P = "),
        ({"logits": torch.zeros(2, 1, 2)}, r"logits must have shape \[B, P, 2\]"),
        ({"landm": torch.zeros(1, 1, 10)}, r"landm must have shape \[B, P, 10\]"),
        ({"inside": torch.ones(3, 1)}, r"inside must have shape \[B, P\]"),
        ({"factor": torch.ones(3)}, r"factor must have shape \[B\] = \[2\]"),
        ({"factor": torch.ones(2, dtype=torch.float64)}, "factor must have the dtype of loc"),
        ({"canvas_size": (0, 10)}, "the canvas size must be positive, got 0x10"),
        ({"score_threshold": 1.5}, r"score_threshold must be in \[0, 1\]"),
        ({"nms_threshold": -0.1}, r"nms_threshold must be in \[0, 1\]"),
        ({"top_k": 0}, "top_k and keep_top_k must be at least 1"),
        ({"variances": (0.1,)}, "variances must hold 2 numbers"),
    ],
)
def test_bad_input_names_the_argument(changes, message):
    args = arguments(**changes)
    with pytest.raises(RuntimeError, match=message):
        ops.detect_faces(**args)


def test_a_bad_canvas_size_is_named():
    with pytest.raises(ValueError, match=r"canvas_size must be \(height, width\), got \(64, 96, 3\)"):
        ops.detect_faces(**arguments(canvas_size=(64, 96, 3)))


def test_integer_outputs_are_refused_and_named():
    with pytest.raises(RuntimeError, match="detect_faces: loc must be float32 or float64, got Long"):
        ops.detect_faces(**arguments(loc=torch.zeros(2, len(prior_boxes(CANVAS)), 4, dtype=torch.long)))
    with pytest.raises(TypeError, match="detect_faces: logits must be a torch.Tensor"):
        ops.detect_faces(**arguments(logits=[[0.0, 1.0]]))


@pytest.mark.parametrize(
    "case", ["plain", "limits", "inside and factor", "nan score", "inf box", "empty image", "all equal"]
)
def test_the_exportable_variant_equals_the_reference(case):
    """export.graph.detect_faces_onnx (the ONNX graph's post-processing: no loop, no
    data-dependent branch) returns the reference's outputs, non-finite codes included."""
    from retinaface_ext.export.graph import detect_faces_onnx

    priors = prior_boxes(CANVAS, dtype=torch.float64)
    loc, logits, landm = outputs(3, priors, seed=11, dtype=torch.float64)
    inside = factor = None
    settings = dict(score_threshold=0.02, top_k=5000, nms_threshold=0.4, keep_top_k=750)
    if case == "limits":
        settings.update(top_k=30, keep_top_k=7, nms_threshold=0.2, score_threshold=0.3)
    if case == "inside and factor":
        inside = (torch.rand(3, len(priors), generator=torch.Generator().manual_seed(1)) > 0.3).double()
        factor = torch.tensor([1.0, 0.5, 2.5], dtype=torch.float64)
    if case == "nan score":
        logits[1, 17, 1] = float("nan")
    if case == "inf box":
        logits[2, 5] = torch.tensor([0.0, 20.0])
        loc[2, 5, 2] = 1e6  # exp overflows: the candidate's box is infinite
    if case == "empty image":
        logits[0, :, 1] = -50.0
    if case == "all equal":
        loc, logits, landm = torch.zeros_like(loc), torch.zeros_like(logits), torch.zeros_like(landm)
        settings.update(top_k=40, nms_threshold=0.3)
    expected = reference.detect_faces(loc, logits, landm, priors, CANVAS, inside, factor, (0.1, 0.2), **settings)
    got = detect_faces_onnx(loc, logits, landm, priors, inside, factor, CANVAS, (0.1, 0.2), **settings)
    assert got[3].tolist() == expected[3].tolist()
    if case in ("nan score", "inf box", "empty image"):
        assert min(expected[3].tolist()) in (NON_FINITE_SCORES, NON_FINITE_CANDIDATES, 0)
    for name, a, b in zip(("boxes", "scores", "landmarks"), got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, msg=name)
