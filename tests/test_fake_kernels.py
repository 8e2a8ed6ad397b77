"""Every op refuses a wrong argument on the Meta device (its Meta kernel: the C++ checks
themselves, or the Python fake where output sizes depend on the data) and under
FakeTensorMode (what torch.compile and torch.export trace with), naming the argument,
in the very words of the real kernel."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import retinaface_ext  # noqa: F401  (registers the ops)
import retinaface_ext.export.onnx_ops  # noqa: F401  (the export's two per-image ops)

OPS = torch.ops.retinaface_ext


def _deform_conv(**changes):
    args = dict(
        input=torch.randn(2, 4, 6, 6),
        weight=torch.randn(6, 2, 3, 3),
        offset=torch.randn(2, 18, 6, 6),
        mask=torch.rand(2, 9, 6, 6),
        bias=torch.randn(6),
    )
    args.update(changes)
    return [args[k] for k in ("input", "weight", "offset", "mask", "bias")] + [1, 1, 1, 1, 1, 1]


def _match(**changes):
    args = dict(
        truths=torch.tensor([[[0.1, 0.1, 0.5, 0.5]]]),
        labels=torch.ones(1, 1, dtype=torch.long),
        landmarks=torch.rand(1, 1, 10),
        num_truths=torch.ones(1, dtype=torch.long),
        priors=torch.rand(20, 4) * 0.5 + 0.1,
        threshold=0.35,
        variances=[0.1, 0.2],
    )
    args.update(changes)
    return list(args.values())


def _predictions(B=2, P=7, **changes):
    args = dict(
        loc=torch.randn(B, P, 4), scores=torch.randn(B, P, 2), landm=torch.randn(B, P, 10), priors=torch.rand(P, 4)
    )
    args.update(changes)
    return args


def _decode(variances=(0.1, 0.2), **changes):
    a = _predictions(**changes)
    return [a["loc"], a["scores"].softmax(-1), a["landm"], a["priors"], list(variances), 0.02]


def _detect(inside=None, factor=None, canvas=(64, 64), variances=(0.1, 0.2), thresholds=(0.02, 0.4), k=(50, 10), **c):
    a = _predictions(**c)
    return [a["loc"], a["scores"], a["landm"], a["priors"], inside, factor, *canvas, list(variances)] + [
        thresholds[0],
        k[0],
        thresholds[1],
        k[1],
    ]


def _boxes(n=5):
    xy = torch.rand(n, 2) * 10
    return torch.cat([xy, xy + 1 + torch.rand(n, 2) * 5], 1)


#: (op, arguments, the argument's name in the message) for each check of csrc/*/*_checks.cpp
REFUSALS = {
    "deform_conv2d: empty image": (OPS.deform_conv2d, _deform_conv(input=torch.randn(2, 4, 0, 6)), "input"),
    "deform_conv2d: groups": (OPS.deform_conv2d, _deform_conv(weight=torch.randn(5, 2, 3, 3)), "weight.shape[0]"),
    "deform_conv2d: offset size": (OPS.deform_conv2d, _deform_conv(offset=torch.randn(2, 18, 5, 6)), "offset"),
    "deform_conv2d: offset groups": (
        OPS.deform_conv2d,
        _deform_conv(offset=torch.randn(2, 54, 6, 6), mask=torch.rand(2, 27, 6, 6)),
        "offset groups",
    ),
    "deform_conv2d: mask": (OPS.deform_conv2d, _deform_conv(mask=torch.rand(2, 8, 6, 6)), "mask"),
    "deform_conv2d: bias": (OPS.deform_conv2d, _deform_conv(bias=torch.randn(5)), "bias"),
    "deform_conv2d: weight dtype": (OPS.deform_conv2d, _deform_conv(weight=torch.randn(6, 2, 3, 3).double()), "weight"),
    "deform_conv2d: stride": (OPS.deform_conv2d, _deform_conv()[:5] + [0, 1, 1, 1, 1, 1], "stride"),
    "deform_conv2d_backward: grad_out": (
        OPS.deform_conv2d_backward,
        [torch.zeros(2, 6, 5, 6), *_deform_conv()],
        "grad_out",
    ),
    "deform_conv2d_backward: offset": (
        OPS.deform_conv2d_backward,
        [torch.zeros(2, 6, 6, 6), *_deform_conv(offset=torch.randn(2, 17, 6, 6))],
        "offset",
    ),
    "image_planes: channels": (OPS.image_planes, [torch.zeros(4, 5, 5, dtype=torch.uint8), [0.0] * 5], "image"),
    "image_planes: dtype": (OPS.image_planes, [torch.zeros(4, 5, 3, dtype=torch.int32), [0.0] * 3], "image"),
    "image_planes: mean": (OPS.image_planes, [torch.zeros(4, 5, 3, dtype=torch.uint8), [0.0] * 2], "mean"),
    "image_planes: rank": (OPS.image_planes, [torch.zeros(5, 3, dtype=torch.uint8), [0.0] * 3], "image"),
    "box_iou: boxes1": (OPS.box_iou, [torch.rand(3, 5), torch.rand(4, 4)], "boxes1"),
    "box_iou: boxes2": (OPS.box_iou, [torch.rand(3, 4), torch.rand(2, 4, 4)], "boxes2"),
    "box_iou: batch": (OPS.box_iou, [torch.rand(2, 3, 4), torch.rand(3, 4, 4)], "batch size"),
    "box_iou: dtype": (OPS.box_iou, [torch.rand(3, 4), torch.rand(4, 4).double()], "boxes2"),
    "box_iou: integers": (OPS.box_iou, [torch.ones(3, 4, dtype=torch.long)] * 2, "boxes1"),
    "match: truths": (OPS.match, _match(truths=torch.rand(1, 1, 5)), "truths"),
    "match: labels": (OPS.match, _match(labels=torch.ones(1, 2, dtype=torch.long)), "labels"),
    "match: landmarks": (OPS.match, _match(landmarks=torch.rand(1, 1, 8)), "landmarks"),
    "match: num_truths": (OPS.match, _match(num_truths=torch.ones(2, dtype=torch.long)), "num_truths"),
    "match: priors": (OPS.match, _match(priors=torch.rand(20, 3)), "priors"),
    "match: labels dtype": (OPS.match, _match(labels=torch.ones(1, 1, dtype=torch.int32)), "labels"),
    "match: threshold": (OPS.match, _match(threshold=1.5), "threshold"),
    "match: variances": (OPS.match, _match(variances=[0.1]), "variances"),
    "nms: boxes": (OPS.nms, [torch.rand(5, 3), torch.rand(5), 0.5], "boxes"),
    "nms: scores": (OPS.nms, [_boxes(), torch.rand(4), 0.5], "scores"),
    "nms: scores dtype": (OPS.nms, [_boxes(), torch.rand(5).double(), 0.5], "scores"),
    "nms: integer boxes": (OPS.nms, [_boxes().long(), torch.rand(5).long(), 0.5], "boxes"),
    "nms: iou_threshold": (OPS.nms, [_boxes(), torch.rand(5), -0.5], "iou_threshold"),
    "box_vote: boxes": (
        OPS.box_vote,
        [torch.rand(4, 3), torch.rand(4), torch.rand(4, 10), torch.zeros(4).long(), 0.4],
        "boxes",
    ),
    "box_vote: landmarks": (
        OPS.box_vote,
        [_boxes(4), torch.rand(4), torch.rand(3, 10), torch.zeros(4).long(), 0.4],
        "landmarks",
    ),
    "box_vote: idxs": (OPS.box_vote, [_boxes(4), torch.rand(4), torch.rand(4, 10), torch.zeros(4), 0.4], "idxs"),
    "box_vote: iou_threshold": (
        OPS.box_vote,
        [_boxes(4), torch.rand(4), torch.rand(4, 10), torch.zeros(4).long(), 2.0],
        "iou_threshold",
    ),
    "batched_nms: idxs": (OPS.batched_nms, [_boxes(), torch.rand(5), torch.zeros(4, dtype=torch.long), 0.5], "idxs"),
    "batched_nms: idxs dtype": (
        OPS.batched_nms,
        [_boxes(), torch.rand(5), torch.zeros(5, dtype=torch.int32), 0.5],
        "idxs",
    ),
    "decode_detections: priors": (OPS.decode_detections, _decode(priors=torch.rand(7, 3)), "priors"),
    "decode_detections: loc": (OPS.decode_detections, _decode(loc=torch.randn(2, 6, 4)), "loc"),
    "decode_detections: conf": (OPS.decode_detections, _decode(scores=torch.randn(2, 7, 3)), "conf"),
    "decode_detections: landm": (OPS.decode_detections, _decode(landm=torch.randn(2, 7, 8)), "landm"),
    "decode_detections: landm dtype": (
        OPS.decode_detections,
        _decode(landm=torch.randn(2, 7, 10).double()),
        "landm",
    ),
    "decode_detections: variances": (OPS.decode_detections, _decode(variances=(0.1,)), "variances"),
    "detect_faces: loc dtype": (OPS.detect_faces, _detect(loc=torch.randn(2, 7, 4).half()), "loc"),
    "detect_faces: logits": (OPS.detect_faces, _detect(scores=torch.randn(1, 7, 2)), "logits"),
    "detect_faces: inside": (OPS.detect_faces, _detect(inside=torch.ones(2, 6)), "inside"),
    "detect_faces: factor": (OPS.detect_faces, _detect(factor=torch.ones(3)), "factor"),
    "detect_faces: factor dtype": (OPS.detect_faces, _detect(factor=torch.ones(2).double()), "factor"),
    "detect_faces: canvas": (OPS.detect_faces, _detect(canvas=(0, 64)), "canvas size"),
    "detect_faces: score_threshold": (OPS.detect_faces, _detect(thresholds=(1.5, 0.4)), "score_threshold"),
    "detect_faces: nms_threshold": (OPS.detect_faces, _detect(thresholds=(0.02, -0.1)), "nms_threshold"),
    "detect_faces: top_k": (OPS.detect_faces, _detect(k=(0, 10)), "top_k"),
    "detect_faces: variances": (OPS.detect_faces, _detect(variances=(0.1, 0.2, 0.3)), "variances"),
    "nms_per_image: scores": (OPS.nms_per_image, [torch.rand(2, 5, 4), torch.rand(10), 3, 0.4, 0.1], "scores"),
    "nms_per_image: boxes": (OPS.nms_per_image, [torch.rand(2, 4, 4), torch.rand(2, 5), 3, 0.4, 0.1], "boxes"),
    "nms_per_image: count": (OPS.nms_per_image, [torch.rand(2, 5, 4), torch.rand(2, 5), 0, 0.4, 0.1], "count"),
    "top_k_per_image: scores": (OPS.top_k_per_image, [torch.ones(2, 5, dtype=torch.long), 3], "scores"),
    "top_k_per_image: count": (OPS.top_k_per_image, [torch.rand(2, 5), 0], "count"),
}


def _on(device, args):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def _refusal(op, args) -> str:
    with pytest.raises(RuntimeError) as refused:
        op(*args)
    return str(refused.value).splitlines()[0]


def test_every_op_is_covered():
    names = {name.split(":")[0] for name in REFUSALS}
    schema_ops = {
        op.split("::")[1] for op in torch._C._dispatch_get_all_op_names() if op.startswith("retinaface_ext::")
    }
    assert names == schema_ops


@pytest.mark.parametrize("case", list(REFUSALS))
def test_meta_refuses_with_the_kernels_message(case):
    op, args, argument = REFUSALS[case]
    real = _refusal(op, args)
    assert argument in real
    assert _refusal(op, _on("meta", args)) == real


@pytest.mark.parametrize("case", list(REFUSALS))
def test_fake_tensors_refuse_with_the_kernels_message(case):
    op, args, _ = REFUSALS[case]
    real = _refusal(op, args)
    with FakeTensorMode() as mode:
        faked = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        assert _refusal(op, faked) == real


def test_meta_kernels_give_the_kernels_shapes():
    """Where the output's size follows from the inputs, the Meta kernel gives it."""
    cases = [
        (OPS.deform_conv2d, _deform_conv()),
        (OPS.deform_conv2d, _deform_conv(mask=None, bias=None)),
        (OPS.deform_conv2d_backward, [torch.randn(2, 6, 6, 6), *_deform_conv()]),
        (OPS.deform_conv2d_backward, [torch.randn(2, 6, 6, 6), *_deform_conv(mask=None, bias=None)]),
        (OPS.image_planes, [torch.zeros(4, 5, 3, dtype=torch.uint8), [1.0, 2.0, 3.0]]),
        (OPS.image_planes, [torch.zeros(2, 4, 5, 1), [1.0]]),
        (OPS.box_iou, [_boxes(3), _boxes(4)]),
        (OPS.box_iou, [_boxes(6).reshape(2, 3, 4), _boxes(8).reshape(2, 4, 4)]),
        (OPS.match, _match()),
    ]
    for op, args in cases:
        real, meta = op(*args), op(*_on("meta", args))
        real, meta = (
            (real,) if isinstance(real, torch.Tensor) else real,
            (meta,) if isinstance(meta, torch.Tensor) else meta,
        )
        assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in meta], op
