"""Prior (anchor) boxes of RetinaFace, vectorised and cached per size and device; the one
generator of them, which the exported graphs trace too (:func:`make_prior_boxes`)."""

import functools
from typing import Sequence, Tuple

import torch

DEFAULT_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
DEFAULT_STEPS = (8, 16, 32)


def prior_boxes(
    image_size: Tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
    clip: bool = False,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Priors ``[P, 4]`` as cx, cy, w, h normalised by the image size (H, W).

    The values and order of Pytorch_Retinaface's PriorBox: for each level k, a
    ceil(H / step) x ceil(W / step) feature map, rows i then columns j then each min
    size; cx = (j + 0.5) * step / W, cy = (i + 0.5) * step / H, w = size / W,
    h = size / H (computed in float64, then rounded once to ``dtype``).

    Returns a new tensor on every call (computed once per arguments and cached; the
    cached tensor itself is never handed out, so editing the result in place or using
    it in autograd is safe, inside ``torch.inference_mode`` or not).
    """
    return cached_prior_boxes(image_size, min_sizes, steps, clip, device, dtype).clone()


def cached_prior_boxes(
    image_size: Tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
    clip: bool = False,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`prior_boxes` without the copy, for callers that only read it (the
    Detector): the shared cached tensor."""
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"prior_boxes: image_size must be positive (H, W), got {tuple(image_size)}")
    if len(min_sizes) != len(steps):
        raise ValueError(f"prior_boxes: min_sizes has {len(min_sizes)} levels but steps has {len(steps)}")
    key_sizes = tuple(tuple(int(s) for s in level) for level in min_sizes)
    return _prior_boxes(
        height,
        width,
        key_sizes,
        tuple(int(s) for s in steps),
        bool(clip),
        torch.device(device if device is not None else "cpu"),
        dtype,
    )


def feature_map_size(height: int, width: int, stride: int) -> Tuple[int, int]:
    """Rows and columns that an ``height x width`` image covers at ``stride``:
    ``ceil(height / stride) x ceil(width / stride)``, because every stride-2 layer of
    RetinaFace maps ``n`` rows to ``ceil(n / 2)``. The one home of that rule: the priors
    (eager and exported), the padding mask and the Detector's per-image prior selection
    all use it. Integer arithmetic, so that torch.export's symbolic sizes pass through."""
    return (height + stride - 1) // stride, (width + stride - 1) // stride


@functools.lru_cache(maxsize=32)
def _prior_boxes(height, width, min_sizes, steps, clip, device, dtype):
    # Made outside inference mode even when called inside it: the cache must hold a
    # normal tensor that later autograd code can use.
    with torch.inference_mode(False):
        return make_prior_boxes(height, width, min_sizes, steps, clip, device, dtype)


def make_prior_boxes(
    height,
    width,
    min_sizes: Sequence[Sequence[int]],
    steps: Sequence[int],
    clip: bool = False,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The priors of :func:`prior_boxes`, made afresh (not cached) with tensor operations
    only, so that ``height`` and ``width`` may be torch.export's symbolic sizes: the
    exported detection graph calls this too."""
    levels = []
    for sizes, step in zip(min_sizes, steps):
        rows, cols = feature_map_size(height, width, step)
        cy = (torch.arange(rows, dtype=torch.float64, device=device) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64, device=device) + 0.5) * step / width
        size = torch.tensor([float(s) for s in sizes], dtype=torch.float64, device=device)
        sw, sh = size / width, size / height
        shape = (rows, cols, len(sizes))
        levels.append(
            torch.stack(
                [
                    cx[None, :, None].expand(shape),
                    cy[:, None, None].expand(shape),
                    sw[None, None, :].expand(shape),
                    sh[None, None, :].expand(shape),
                ],
                -1,
            ).reshape(-1, 4)
        )
    priors = torch.cat(levels)
    if clip:
        priors = priors.clamp(min=0, max=1)
    return priors.to(dtype)
