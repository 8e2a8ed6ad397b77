"""The Detector's post-processing: network outputs to :class:`Detections` per image, with
:func:`retinaface_ext.ops.detect_faces` (face scores, decoding, the score filter, top-k,
NMS) in one call; the padding masks of mixed-size batches, compiling, and the errors for
non-finite outputs."""

from typing import List, Sequence

import torch

from .. import ops
from ..models.config import DetectionSettings, RetinaFaceConfig
from ..ops.detect_faces import NON_FINITE_CANDIDATES, NON_FINITE_SCORES
from ..priors import cached_prior_boxes, feature_map_size
from .detections import Detections


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
            raise ValueError(
                f"{name}: the network's {what} are not finite (NaN or inf) for this image; are the "
                f"weights finite and the image in 0..255?"
            )


class Postprocessing:
    """Detections from a network's outputs, as ``settings`` says, for a network of
    ``config`` (its priors and variances); ``clip_boxes`` clips them to each image;
    ``compiled`` runs :func:`~retinaface_ext.ops.detect_faces` through ``torch.compile``."""

    def __init__(
        self, config: RetinaFaceConfig, settings: DetectionSettings, clip_boxes: bool = False, compiled: bool = False
    ):
        self.config, self.settings, self.clip_boxes = config, settings, bool(clip_boxes)
        self.detect_faces = compile_stage(ops.detect_faces) if compiled else ops.detect_faces

    def __call__(
        self, loc, logits, landm, canvas, sizes=None, factors=None, names=None, image_sizes=None
    ) -> List[Detections]:
        """Detections per image from the network outputs of a batch whose images were
        ``sizes`` (default: all the canvas) inside ``canvas`` (H, W), resized by ``factors``
        from ``image_sizes``; ``names`` name them in errors."""
        batch = loc.shape[0]
        sizes = sizes or [tuple(canvas)] * batch
        names = names or [f"images[{b}]" for b in range(batch)]
        if loc.dtype in (torch.float16, torch.bfloat16):  # a half network: post-processing in float32
            loc, logits, landm = loc.float(), logits.float(), landm.float()
        priors = cached_prior_boxes(
            canvas, self.config.min_sizes, self.config.steps, device=loc.device, dtype=loc.dtype
        )
        if loc.shape[1] != len(priors):  # a network of another layout (an .onnx file of another model)
            raise ValueError(
                f"the network gives {loc.shape[1]} rows for a {canvas[0]}x{canvas[1]} canvas; the "
                f"{self.config.backbone} preset has {len(priors)} priors there"
            )
        inside = None
        if any(tuple(size) != tuple(canvas) for size in sizes):
            inside = inside_priors(self.config, sizes, canvas, loc.device)
        factor = None
        if factors is not None and any(f != 1.0 for f in factors):
            factor = torch.tensor(factors, device=loc.device, dtype=loc.dtype)
        boxes, scores, landmarks, counts = self.detect_faces(
            loc,
            logits,
            landm,
            priors,
            tuple(canvas),
            inside,
            factor,
            self.config.variances,
            *self.settings.op_arguments(),
        )
        counts = counts.tolist()
        check_counts(counts, names)
        image_sizes = image_sizes or [tuple(size) for size in sizes]
        results = []
        per_image = (
            zip(boxes.split(counts), scores.split(counts), landmarks.split(counts))
            if batch > 1
            else [(boxes, scores, landmarks)]
        )
        for (image_boxes, image_scores, image_landmarks), image_size in zip(per_image, image_sizes):
            detections = Detections(image_boxes, image_scores, image_landmarks.reshape(-1, 5, 2), tuple(image_size))
            results.append(detections.clipped() if self.clip_boxes else detections)
        return results
