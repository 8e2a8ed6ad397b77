"""How our ops become standard ONNX operators, for both of torch's exporters.

- ``retinaface_ext::deform_conv2d`` -> ``DeformConv`` (opset 19 and later): the same
  offset layout ((dy, dx) per offset group and kernel point), mask and border rule. For
  the torch.export-based exporter (``torch.onnx.export(dynamo=True)``) through
  :func:`custom_translations`; for the TorchScript-based one (``dynamo=False``) through a
  symbolic function, registered by :func:`register_torchscript_symbolics`.
- ``retinaface_ext::nms_per_image`` -> ``NonMaxSuppression`` (torch.export exporter
  only): the per-image NMS of the post-processing graph, an op of its own because ONNX's
  NMS has its own shape of result; eagerly it runs on our ``batched_nms`` kernel.
- ``retinaface_ext::top_k_per_image`` -> ``TopK``: the best scores of each image with
  ties broken by index, as ONNX's TopK (and the reference's stable sort) do and
  ``torch.topk`` does not; torch's exporter has no stable sort.
"""

from typing import Tuple

import torch

from .. import _extension, ops

#: The first ONNX opset with DeformConv.
DEFORM_CONV_OPSET = 19


def _check_per_image(op: str, scores, boxes, count: int) -> None:
    """The per-image ops' arguments, for the eager function and the fake alike."""
    torch._check(
        scores.dim() == 2 and scores.dtype.is_floating_point,
        lambda: f"{op}: scores must be a floating point [B, N], got {scores.dtype} of shape {list(scores.shape)}",
    )
    if boxes is not None:
        torch._check(
            boxes.dim() == 3 and boxes.shape[:2] == scores.shape and boxes.shape[2] == 4,
            lambda: f"{op}: boxes must have shape [B, N, 4] = {[*scores.shape, 4]}, got {list(boxes.shape)}",
        )
    torch._check(count >= 1, lambda: f"{op}: the count per image must be at least 1, got {count}")


@torch.library.custom_op("retinaface_ext::nms_per_image", mutates_args=())
def nms_per_image(
    boxes: torch.Tensor, scores: torch.Tensor, max_per_image: int, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """ONNX ``NonMaxSuppression`` with one class: per image, greedy NMS (IoU strictly
    above ``iou_threshold`` suppresses) over the boxes ``[B, N, 4]`` whose ``scores
    [B, N]`` are above ``score_threshold``, best first, at most ``max_per_image``.
    Returns ``[K, 2]`` int64 (image, box index), by image, each image best first."""
    _check_per_image("nms_per_image", scores, boxes, max_per_image)
    batch, count = scores.shape
    flat_scores = scores.reshape(-1)
    candidates = torch.nonzero(flat_scores > score_threshold).flatten()
    image = candidates // count
    keep = candidates[ops.batched_nms(boxes.reshape(-1, 4)[candidates], flat_scores[candidates], image, iou_threshold)]
    keep = keep[torch.argsort(keep // count, stable=True)]
    image = keep // count
    per_image = torch.bincount(image, minlength=batch)
    rank = torch.arange(keep.shape[0], device=keep.device) - (torch.cumsum(per_image, 0) - per_image)[image]
    keep = keep[rank < max_per_image]
    return torch.stack([keep // count, keep % count], 1)


@nms_per_image.register_fake
def _nms_per_image_fake(boxes, scores, max_per_image, iou_threshold, score_threshold):
    _check_per_image("nms_per_image", scores, boxes, max_per_image)
    kept = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((kept, 2), dtype=torch.long)


@torch.library.custom_op("retinaface_ext::top_k_per_image", mutates_args=())
def top_k_per_image(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, N)`` best of ``scores [B, N]`` per image, best first, equal scores in
    index order: (values, indices), each ``[B, min(k, N)]``."""
    _check_per_image("top_k_per_image", scores, None, k)
    values, order = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k].clone(), order[:, :k].clone()


@top_k_per_image.register_fake
def _top_k_per_image_fake(scores, k):
    _check_per_image("top_k_per_image", scores, None, k)
    size = (scores.shape[0], torch.sym_min(k, scores.shape[1]))
    return scores.new_empty(size), scores.new_empty(size, dtype=torch.long)


def _deform_conv_attributes(
    input_channels, weight_shape, offset_channels, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
):
    kh, kw = int(weight_shape[2]), int(weight_shape[3])
    return dict(
        dilations=[dilation_h, dilation_w],
        group=int(input_channels) // int(weight_shape[1]),
        kernel_shape=[kh, kw],
        offset_group=int(offset_channels) // (2 * kh * kw),
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=[stride_h, stride_w],
    )


def _deform_conv2d_onnx(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    from onnxscript import opset19 as op

    attributes = _deform_conv_attributes(
        input.shape[1], weight.shape, offset.shape[1], stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    )
    return op.DeformConv(input, weight, offset, bias, mask, **attributes)


def _nms_per_image_onnx(boxes, scores, max_per_image, iou_threshold, score_threshold):
    from onnxscript import opset19 as op

    selected = op.NonMaxSuppression(  # [K, 3]: image, class, box
        boxes,
        op.Unsqueeze(scores, [1]),
        op.Constant(value_ints=[max_per_image]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


def _top_k_per_image_onnx(scores, k):
    from onnxscript import opset19 as op

    count = op.Min(op.Constant(value_ints=[k]), op.Shape(scores, start=1, end=2))
    values, indices = op.TopK(scores, count, axis=1, largest=1, sorted=1)
    return values, indices


def custom_translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    _extension.require()
    return {
        torch.ops.retinaface_ext.deform_conv2d.default: _deform_conv2d_onnx,
        torch.ops.retinaface_ext.nms_per_image.default: _nms_per_image_onnx,
        torch.ops.retinaface_ext.top_k_per_image.default: _top_k_per_image_onnx,
    }


def _deform_conv2d_symbolic(
    g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
):
    from torch.onnx import symbolic_helper

    def value(v):
        return symbolic_helper._maybe_get_const(v, "i")

    weight_shape = symbolic_helper._get_tensor_sizes(weight)
    input_shape, offset_shape = symbolic_helper._get_tensor_sizes(input), symbolic_helper._get_tensor_sizes(offset)
    if None in weight_shape or input_shape[1] is None or offset_shape[1] is None:
        raise RuntimeError("deform_conv2d: ONNX export needs static channel counts and kernel size")
    attributes = _deform_conv_attributes(
        input_shape[1],
        weight_shape,
        offset_shape[1],
        value(stride_h),
        value(stride_w),
        value(pad_h),
        value(pad_w),
        value(dilation_h),
        value(dilation_w),
    )
    if symbolic_helper._is_none(bias):  # an omitted input in the middle: a zero bias instead
        bias = g.op("Constant", value_t=torch.zeros(weight_shape[0]))
    inputs = [input, weight, offset, bias] + ([] if symbolic_helper._is_none(mask) else [mask])
    return g.op("DeformConv", *inputs, **{f"{name}_i": v for name, v in attributes.items()})


_registered = False


def register_torchscript_symbolics() -> None:
    """Teach ``torch.onnx.export(dynamo=False)`` our deformable convolution (once)."""
    global _registered
    if not _registered:
        torch.onnx.register_custom_op_symbolic(
            "retinaface_ext::deform_conv2d", _deform_conv2d_symbolic, DEFORM_CONV_OPSET
        )
        _registered = True
