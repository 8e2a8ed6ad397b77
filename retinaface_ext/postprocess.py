"""The Detector's post-processing around :func:`retinaface_ext.ops.detect_faces`: the
padding masks of mixed-size batches, compiling, and the errors for non-finite outputs."""

from typing import Sequence

import torch

from .ops.detect_faces import NON_FINITE_CANDIDATES, NON_FINITE_SCORES
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


def compile_stage(fn):
    """``torch.compile(fn)``, traced with the sizes our ops produce captured as symbols
    (else dynamo would break the graph at each of them)."""
    compiled = torch.compile(fn, dynamic=None)

    def run(*args, **kwargs):
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
            return compiled(*args, **kwargs)

    return run


def check_counts(counts: Sequence[int], names: Sequence[str]) -> None:
    """Raise ValueError naming the first image that :func:`~retinaface_ext.ops.detect_faces`
    reports as not finite: NaN scores would drop faces silently, infinite boxes would
    fail in NMS far from the cause."""
    for count, name in zip(counts, names):
        if count in (NON_FINITE_SCORES, NON_FINITE_CANDIDATES):
            what = "face scores" if count == NON_FINITE_SCORES else "decoded boxes"
            raise ValueError(f"{name}: the network's {what} are not finite (NaN or inf) for this image; are the "
                             f"weights finite and the image in 0..255?")
