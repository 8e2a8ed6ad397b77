"""Box/landmark coding round trips and decode_detections = reference decode + threshold."""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference
from retinaface_ext.priors import prior_boxes


def network_like_outputs(batch, priors, seed, dtype=torch.float32, face_fraction=0.1):
    """loc, conf (softmax probabilities), landm as a trained network outputs them."""
    g = torch.Generator().manual_seed(seed)
    P = priors.shape[0]
    loc = torch.randn(batch, P, 4, generator=g) * 0.5
    landm = torch.randn(batch, P, 10, generator=g)
    face_logit = torch.randn(batch, P, generator=g) * 2 - 6
    face_logit[torch.rand(batch, P, generator=g) < face_fraction] += 8
    conf = torch.softmax(torch.stack([torch.zeros_like(face_logit), face_logit], -1), -1)
    return loc.to(dtype), conf.to(dtype), landm.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_inverts_encode(dtype):
    priors = prior_boxes((320, 240), dtype=dtype)
    g = torch.Generator().manual_seed(0)
    centre = priors[:, :2] + (torch.rand(3, len(priors), 2, generator=g, dtype=dtype) - 0.5) * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(torch.randn(3, len(priors), 2, generator=g, dtype=dtype) * 0.5)
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    torch.testing.assert_close(ops.decode(ops.encode(boxes, priors), priors), boxes)
    points = torch.rand(3, len(priors), 10, generator=g, dtype=dtype)
    torch.testing.assert_close(ops.decode_landm(ops.encode_landm(points, priors), priors), points)


def test_coding_is_batched_over_leading_dimensions():
    priors = prior_boxes((64, 64))
    loc = torch.randn(2, 3, len(priors), 4)
    torch.testing.assert_close(ops.decode(loc, priors)[1, 2], ops.decode(loc[1, 2], priors))


@pytest.mark.parametrize("threshold", [0.0, 0.02, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_detections_equals_reference(device, threshold, dtype):
    priors = prior_boxes((1024, 624), dtype=dtype, device=device)
    loc, conf, landm = (t.to(device) for t in network_like_outputs(3, priors, seed=1, dtype=dtype))
    ours = ops.decode_detections(loc, conf, landm, priors, (0.1, 0.2), threshold)
    expected = reference.decode_detections(loc, conf, landm, priors, (0.1, 0.2), threshold)
    names = ("boxes", "scores", "landmarks", "image_index", "prior_index")
    for name, a, e in zip(names, ours, expected):
        exact = name in ("scores", "image_index", "prior_index")
        torch.testing.assert_close(a, e, rtol=0 if exact else None, atol=0 if exact else None, msg=name)
    if threshold == 1.0:
        assert len(ours[0]) == 0
    if threshold == 0.02:
        assert 0 < len(ours[0]) < loc.shape[0] * loc.shape[1]  # a real filter


def test_decode_detections_empty_batch_and_strided_inputs():
    priors = prior_boxes((64, 64))
    loc, conf, landm = network_like_outputs(2, priors, seed=2)
    empty = ops.decode_detections(loc[:0], conf[:0], landm[:0], priors)
    assert all(t.shape[0] == 0 for t in empty)
    strided = ops.decode_detections(loc.transpose(0, 1).contiguous().transpose(0, 1), conf, landm, priors)
    for a, e in zip(strided, ops.decode_detections(loc, conf, landm, priors)):
        torch.testing.assert_close(a, e)


def test_opcheck(device):
    priors = prior_boxes((64, 48), device=device)
    loc, conf, landm = (t.to(device) for t in network_like_outputs(2, priors, seed=3))
    torch.library.opcheck(
        torch.ops.retinaface_ext.decode_detections.default, (loc, conf, landm, priors, [0.1, 0.2], 0.3)
    )
    with_grad = [t.double().requires_grad_() for t in (loc, conf, landm, priors)]
    torch.library.opcheck(torch.ops.retinaface_ext.decode_detections.default, (*with_grad, [0.1, 0.2], 0.3))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(priors=a["priors"][:, :3]), r"priors must have shape \[P, 4\]"),
        (lambda a: a.update(loc=a["loc"][:, :-1]), r"loc must have shape \[B, P, 4\] with P = 42"),
        (lambda a: a.update(conf=a["conf"][..., :1]), r"conf must have shape \[B, P, 2\] = \[2, 42, 2\]"),
        (lambda a: a.update(landm=a["landm"][..., :4]), r"landm must have shape \[B, P, 10\]"),
        (lambda a: a.update(conf=a["conf"].double()), "conf must have the dtype of loc"),
        (
            lambda a: a.update(
                loc=a["loc"].half(), conf=a["conf"].half(), landm=a["landm"].half(), priors=a["priors"].half()
            ),
            "loc on the CPU must be float32 or float64",
        ),
        (lambda a: a.update(variances=(0.1,)), "variances must hold 2 numbers"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    priors = prior_boxes((32, 32))
    loc, conf, landm = network_like_outputs(2, priors, seed=4)
    args = dict(loc=loc, conf=conf, landm=landm, priors=priors, variances=(0.1, 0.2))
    change(args)
    with pytest.raises(RuntimeError, match=message):
        ops.decode_detections(**args)


def test_decode_detections_gradients_equal_the_reference(device):
    """Gradients reach loc, conf, landm and priors exactly as through the reference."""
    priors = prior_boxes((48, 64), dtype=torch.float64)
    loc, conf, landm = (t.double() for t in network_like_outputs(2, priors, seed=5, face_fraction=0.3))
    leaves = [t.to(device).requires_grad_() for t in (loc, conf, landm, priors)]
    boxes, scores, points, image, prior = ops.decode_detections(*leaves, score_threshold=0.3)
    assert len(scores) > 5
    weights = [torch.randn(t.shape, dtype=torch.float64, device=device) for t in (boxes, scores, points)]
    loss = sum((w * t).sum() for w, t in zip(weights, (boxes, scores, points)))
    ours = torch.autograd.grad(loss, leaves)
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    r_boxes, r_scores, r_points, _, _ = reference.decode_detections(*twins, score_threshold=0.3)
    r_loss = sum((w * t).sum() for w, t in zip(weights, (r_boxes, r_scores, r_points)))
    for mine, expected in zip(ours, torch.autograd.grad(r_loss, twins)):
        torch.testing.assert_close(mine, expected)
    only_boxes = ops.decode_detections(*leaves, score_threshold=0.3)[0].sum()
    (grad_loc,) = torch.autograd.grad(only_boxes, leaves[0])
    assert grad_loc.abs().sum() > 0


def test_decode_detections_gradcheck():
    priors = prior_boxes((16, 24), dtype=torch.float64)
    loc, conf, landm = (t.double() for t in network_like_outputs(1, priors, seed=6, face_fraction=0.5))

    def fn(loc, landm, priors):
        boxes, scores, points, _, _ = ops.decode_detections(loc, conf, landm, priors, score_threshold=0.3)
        return boxes, points

    assert torch.autograd.gradcheck(fn, (loc.requires_grad_(), landm.requires_grad_(), priors.requires_grad_()))
