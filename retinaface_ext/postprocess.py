"""The Detector's post-processing in stages that compile whole (``torch.compile``, no
graph breaks: each size that depends on the data stays symbolic), and its checks."""

from typing import Sequence

import torch

from . import ops
from .priors import feature_map_size


def inside_priors(config, sizes, canvas, device=None) -> torch.Tensor:
    """``[B, P]`` float: 1 where a prior of the canvas lies on the grid of image b (of
    size ``sizes[b]``), 0 in its padding. The kept priors of an image are, in order, the
    priors it has alone."""
    masks = []
    for height, width in sizes:
        levels = []
        for step, min_sizes in zip(config.steps, config.min_sizes):
            rows, cols = feature_map_size(*canvas, step)
            inside = torch.zeros(rows, cols, len(min_sizes), device=device)
            image_rows, image_cols = feature_map_size(height, width, step)
            inside[:image_rows, :image_cols] = 1
            levels.append(inside.flatten())
        masks.append(torch.cat(levels))
    return torch.stack(masks)


def decode_candidates(loc, logits, landmarks, priors, inside, variances, threshold):
    """The post-processing up to the candidates: face scores ``[B, P]`` (0 on priors
    outside an image, where ``inside`` says so) and the decoded candidates above
    ``threshold`` (:func:`retinaface_ext.ops.decode_detections`)."""
    # The face probability of the two-class softmax, sigmoid(face - background) being
    # the same function; softmax over a dimension of 2 costs 25x more on the CPU.
    face = torch.sigmoid(logits[..., 1] - logits[..., 0])
    if inside is not None:
        face = face * inside
    conf = torch.stack([1 - face, face], dim=-1)
    boxes, scores, points, image_index, _ = ops.decode_detections(loc, conf, landmarks, priors, variances, threshold)
    return face, boxes, scores, points, image_index


def select_detections(boxes, scores, points, image_index, canvas, factor, batch, top_k, nms_threshold):
    """The rest: candidates in pixels of their images (``factor [B]``: each image's resize
    factor, or None), the ``top_k`` best of each image, NMS per image; returns them and
    the kept indices, by image, each by score."""
    height, width = canvas
    boxes = boxes * boxes.new_tensor([width, height] * 2)
    points = points * points.new_tensor([width, height] * 5)
    if factor is not None:
        boxes, points = boxes / factor[image_index, None], points / factor[image_index, None]
    if torch.compiler.is_compiling() or boxes.shape[0] > top_k:  # compiled: no branch on a data size
        best = top_k_per_image(scores, image_index, batch, top_k)
        boxes, scores, points, image_index = boxes[best], scores[best], points[best], image_index[best]
    keep = ops.batched_nms(boxes, scores, image_index, nms_threshold)
    keep = keep[torch.argsort(image_index[keep], stable=True)]  # by image, each by score
    return boxes, scores, points, image_index, keep


def compile_stage(fn):
    """``torch.compile(fn)``, traced with the sizes our ops and the selections produce
    captured as symbols (else dynamo would break the graph at each of them)."""
    compiled = torch.compile(fn, dynamic=None)

    def run(*args, **kwargs):
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
            return compiled(*args, **kwargs)

    return run


def count_per_image(image_index: torch.Tensor, batch: int) -> torch.Tensor:
    """``[batch]`` int64: how often each image occurs (bincount with a size known in advance)."""
    return torch.zeros(batch, dtype=torch.long, device=image_index.device).index_add_(
        0, image_index, torch.ones_like(image_index))


def check_finite_detections(face: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, image_index: torch.Tensor,
                  names: Sequence[str]) -> None:
    """Raise ValueError naming the first image whose face scores ``[B, P]`` or decoded
    candidates (``boxes``, ``points``; row k of image ``image_index[k]``) hold NaN or inf:
    NaN scores would drop faces silently, infinite boxes fail in NMS far from the cause.
    A finite sum is the cheap common case (one synchronisation); only a non-finite one (a
    bad value, or large finite values that overflow the sum) looks row by row."""
    if bool(torch.isfinite(face.sum() + boxes.sum() + points.sum())):
        return
    bad_scores = ~torch.isfinite(face).all(1)
    bad_rows = ~(torch.isfinite(boxes).all(1) & torch.isfinite(points).all(1))
    bad = torch.unique(torch.cat([torch.nonzero(bad_scores).flatten(), image_index[bad_rows]]))
    if len(bad):
        what = "face scores" if bool(bad_scores[bad[0]]) else "decoded boxes"
        raise ValueError(f"{names[int(bad[0])]}: the network's {what} are not finite (NaN or inf) for this "
                         f"image; are the weights finite and the image in 0..255?")


def top_k_per_image(scores, image_index, batch, k) -> torch.Tensor:
    """Indices of the ``k`` best candidates of every image."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(image_index[order], stable=True)]
    counts = count_per_image(image_index, batch)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.shape[0], device=order.device) - starts[image_index[order]]
    return order[rank < k]
