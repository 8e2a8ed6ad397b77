"""WIDER FACE prediction, one loop for ``retinaface widerface-predict`` and the training's
validation: a Detector over ``WIDER_val/images/<event>/<image>``, in batches, each
image's faces as the protocol's rows (x, y, w, h, score)."""

import os
from typing import Iterator, List, Tuple

import numpy as np

from ..images import IMAGE_EXTENSIONS
from ..inference.folders import batches


def widerface_images(root: str) -> List[Tuple[str, str]]:
    """(event, path) of every image of ``root`` (WIDER_val/images: one folder per event),
    sorted; the same image extensions as a folder run. ValueError naming ``root`` when
    it is not a folder or holds no ``<event>/<image>``."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder not found: {root} (expected WIDER_val/images/<event>/*.jpg)")
    events = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
    images = [
        (event, os.path.join(root, event, name))
        for event in events
        for name in sorted(os.listdir(os.path.join(root, event)))
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not images:
        raise ValueError(f"{root}: no <event>/<image> files")
    return images


def predict_widerface(
    detector, images: List[Tuple[str, str]], batch_size: int = 0
) -> Iterator[Tuple[str, str, np.ndarray]]:
    """(event, image name without extension, rows ``[N, 5]`` float64 x, y, w, h, score)
    for each of ``images`` (from :func:`widerface_images`), in order, ``batch_size`` at a
    time (0: the detector's)."""
    for chunk in batches(images, batch_size or detector.batch_size):
        pixels = [detector.read_image(path) for _, path in chunk]
        for (event, path), faces in zip(chunk, detector.detect(pixels, names=[path for _, path in chunk])):
            boxes = faces.boxes.cpu().double().numpy()
            scores = faces.scores.cpu().double().numpy()
            rows = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores[:, None]], 1)
            yield event, os.path.splitext(os.path.basename(path))[0], rows
