"""The fakes' argument checks for the ops whose output sizes depend on the data (nms,
batched_nms, box_vote, decode_detections, detect_faces): the C++ checks of ``csrc/*/*_checks.cpp``
in their order and with their messages, so that tracing refuses what the kernels refuse,
in the same words. The other ops need none: their Meta kernels are the C++ checks."""

import torch

# How c10 prints a dtype in a kernel's message.
_DTYPE_NAMES = {
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float",
    torch.float64: "Double",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def _dtype(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype))


def _number(value: float) -> str:
    return format(value, "g")  # as std::ostream prints a double


def _sizes(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def _check(condition, message) -> None:
    torch._check(condition, lambda: message())


def _boxes_and_scores(op: str, boxes, scores) -> int:
    """boxes [N, 4] and scores [N], the first checks of NMS and voting; returns N."""
    _check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"{op}: boxes must have shape [N, 4] (x1, y1, x2, y2), got {_sizes(boxes)}",
    )
    n = boxes.shape[0]
    _one_per_box(op, "scores", scores, n)
    return n


def _one_per_box(op: str, name: str, t, n, dims: int = 1, shape: str = "[N]") -> None:
    _check(
        t.dim() == dims and t.shape[0] == n,
        lambda: f"{op}: {name} must have shape {shape} with N = boxes.shape[0] = {n}, got {_sizes(t)}",
    )


def check_nms(op: str, boxes, scores, idxs, iou_threshold: float) -> None:
    """csrc/nms/nms_checks.cpp"""
    n = _boxes_and_scores(op, boxes, scores)
    _check(
        boxes.dtype.is_floating_point, lambda: f"{op}: boxes must be a floating point tensor, got {_dtype(boxes.dtype)}"
    )
    like_first(op, "scores", scores, "boxes", boxes)
    if idxs is not None:
        _one_per_box(op, "idxs", idxs, n)
        _check(idxs.dtype == torch.int64, lambda: f"{op}: idxs must be int64, got {_dtype(idxs.dtype)}")
        _check(
            idxs.device == boxes.device,
            lambda: f"{op}: idxs must be on the device of boxes ({boxes.device}), got {idxs.device}",
        )
    _check(
        iou_threshold >= 0.0,
        lambda: f"{op}: iou_threshold must be a number >= 0 (IoU lies in [0, 1]), got {_number(iou_threshold)}",
    )


def like_first(op: str, name: str, t, first_name: str, first) -> None:
    """``t`` has the dtype and device of ``first`` (csrc/common/predictions.cpp:check_like_loc)."""
    _check(
        t.dtype == first.dtype,
        lambda: f"{op}: {name} must have the dtype of {first_name} ({_dtype(first.dtype)}), got {_dtype(t.dtype)}",
    )
    _check(
        t.device == first.device,
        lambda: f"{op}: {name} must be on the device of {first_name} ({first.device}), got {t.device}",
    )


def check_predictions(op: str, loc, scores_name: str, scores, landm, priors):
    """csrc/common/predictions.cpp:check_prediction_shapes; returns (B, P)."""
    _check(
        priors.dim() == 2 and priors.shape[1] == 4,
        lambda: f"{op}: priors must have shape [P, 4] (cx, cy, w, h), got {_sizes(priors)}",
    )
    P = priors.shape[0]
    _check(
        loc.dim() == 3 and loc.shape[1] == P and loc.shape[2] == 4,
        lambda: f"{op}: loc must have shape [B, P, 4] with P = {P}, got {_sizes(loc)}",
    )
    B = loc.shape[0]
    _check(
        scores.dim() == 3 and tuple(scores.shape) == (B, P, 2),
        lambda: (
            f"{op}: {scores_name} must have shape [B, P, 2] = [{B}, {P}, 2] (background, face), got {_sizes(scores)}"
        ),
    )
    _check(
        landm.dim() == 3 and tuple(landm.shape) == (B, P, 10),
        lambda: f"{op}: landm must have shape [B, P, 10] = [{B}, {P}, 10], got {_sizes(landm)}",
    )
    for name, t in ((scores_name, scores), ("landm", landm), ("priors", priors)):
        like_first(op, name, t, "loc", loc)
    return B, P


def check_variances(op: str, variances) -> None:
    _check(len(variances) == 2, lambda: f"{op}: variances must hold 2 numbers, got {len(variances)}")


def check_decode_detections(loc, conf, landm, priors, variances) -> None:
    """csrc/box_coder/box_coder_checks.cpp"""
    op = "decode_detections"
    _check(loc.dtype.is_floating_point, lambda: f"{op}: loc must be a floating point tensor, got {_dtype(loc.dtype)}")
    check_predictions(op, loc, "conf", conf, landm, priors)
    check_variances(op, variances)


def check_detect_faces(
    loc, logits, landm, priors, inside, factor, height, width, variances, score_threshold, top_k, nms_threshold, keep
) -> None:
    """csrc/detect_faces/detect_faces_checks.cpp"""
    op = "detect_faces"
    _check(
        loc.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: loc must be float32 or float64, got {_dtype(loc.dtype)}",
    )
    B, P = check_predictions(op, loc, "logits", logits, landm, priors)
    if inside is not None:
        _check(
            inside.dim() == 2 and tuple(inside.shape) == (B, P),
            lambda: f"{op}: inside must have shape [B, P] = [{B}, {P}], got {_sizes(inside)}",
        )
        like_first(op, "inside", inside, "loc", loc)
    if factor is not None:
        _check(
            factor.dim() == 1 and factor.shape[0] == B,
            lambda: f"{op}: factor must have shape [B] = [{B}], got {_sizes(factor)}",
        )
        like_first(op, "factor", factor, "loc", loc)
    _check(height > 0 and width > 0, lambda: f"{op}: the canvas size must be positive, got {height}x{width}")
    check_variances(op, variances)
    _check(
        0.0 <= score_threshold <= 1.0,
        lambda: f"{op}: score_threshold must be in [0, 1], got {_number(score_threshold)}",
    )
    _check(0.0 <= nms_threshold <= 1.0, lambda: f"{op}: nms_threshold must be in [0, 1], got {_number(nms_threshold)}")
    _check(top_k >= 1 and keep >= 1, lambda: f"{op}: top_k and keep_top_k must be at least 1, got {top_k} and {keep}")


def check_box_vote(boxes, scores, landmarks, idxs, iou_threshold: float) -> None:
    """csrc/box_vote/box_vote_checks.cpp"""
    op = "box_vote"
    n = _boxes_and_scores(op, boxes, scores)
    _one_per_box(op, "landmarks", landmarks, n, 2, "[N, D]")
    _one_per_box(op, "idxs", idxs, n)
    _check(
        boxes.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: boxes must be float32 or float64, got {_dtype(boxes.dtype)}",
    )
    for name, t in (("scores", scores), ("landmarks", landmarks)):
        _check(
            t.dtype == boxes.dtype,
            lambda: f"{op}: {name} must have the dtype of boxes ({_dtype(boxes.dtype)}), got {_dtype(t.dtype)}",
        )
    _check(idxs.dtype == torch.int64, lambda: f"{op}: idxs must be int64, got {_dtype(idxs.dtype)}")
    for name, t in (("scores", scores), ("landmarks", landmarks), ("idxs", idxs)):
        _check(
            t.device == boxes.device,
            lambda: f"{op}: {name} must be on the device of boxes ({boxes.device}), got {t.device}",
        )
    _check(
        0.0 <= iou_threshold <= 1.0,
        lambda: f"{op}: iou_threshold must be an IoU in [0, 1], got {_number(iou_threshold)}",
    )
