"""An oracle for the training augmentation, written from the documented behaviour of
Pytorch_Retinaface's data/data_augment.py (its draws with Python's ``random``, its crop,
clip, centre test, mirror and normalisation), in float64 numpy. Not part of the package.
"""

import random

import cv2
import numpy as np

SCALES = [0.3, 0.45, 0.6, 0.8, 1.0]


def reference_crop_draw(rnd: random.Random, height, width, boxes, tries=250):
    """The reference's search: a square of a random scale of the short side at a random
    spot (randrange: the last position is never drawn), kept once some box is wholly
    inside (IoF = 1, IoF's area floored at 1) and some centre strictly inside."""
    for _ in range(tries):
        scale = rnd.choice(SCALES)
        side = int(scale * min(width, height))
        left = 0 if width == side else rnd.randrange(width - side)
        top = 0 if height == side else rnd.randrange(height - side)
        roi = np.array([left, top, left + side, top + side], dtype=np.float64)
        lt = np.maximum(boxes[:, :2], roi[:2])
        rb = np.minimum(boxes[:, 2:4], roi[2:])
        inter = np.prod(rb - lt, axis=1) * (lt < rb).all(axis=1)
        area = np.prod(boxes[:, 2:4] - boxes[:, :2], axis=1)
        if not (inter / np.maximum(area, 1) >= 1).any():
            continue
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
        if not ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1).any():
            continue
        return int(roi[0]), int(roi[1]), int(roi[2]), int(roi[3])
    return None


def reference_geometry(height, width, target, roi, mirror):
    """Boxes [K, 4] and landmarks [K, 10] in [0, 1] as the reference makes them from a
    [G, 15] target, a crop (or None: padded to a square) and the mirror flag."""
    boxes = target[:, :4].astype(np.float64)
    landmarks = target[:, 4:14].astype(np.float64)
    if roi is not None:
        roi = np.asarray(roi, dtype=np.float64)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        keep = ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)
        boxes, landmarks = boxes[keep].copy(), landmarks[keep].reshape(-1, 5, 2).copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], roi[:2]) - roi[:2]
        boxes[:, 2:] = np.minimum(boxes[:, 2:], roi[2:]) - roi[:2]
        landmarks = np.minimum(np.maximum(landmarks - roi[:2], 0), roi[2:] - roi[:2]).reshape(-1, 10)
        side = roi[2] - roi[0]
    else:
        side = max(height, width)
    if mirror:
        boxes[:, 0::2] = side - boxes[:, 2::-2]
        points = landmarks.reshape(-1, 5, 2).copy()
        points[:, :, 0] = side - points[:, :, 0]
        points = points[:, [1, 0, 2, 4, 3]]
        landmarks = points.reshape(-1, 10)
    return boxes / side, landmarks / side


def reference_distort(image, contrast_first, brightness, contrast, saturation, hue):
    """The reference's photometric distortion with fixed draws (None: step skipped), in
    its float arithmetic, always through HSV as it does."""

    def convert(channel, alpha=1.0, beta=0.0):
        values = channel.astype(float) * alpha + beta
        values[values < 0] = 0
        values[values > 255] = 255
        channel[:] = values

    image = image.copy()
    if brightness is not None:
        convert(image, beta=brightness)
    if contrast_first and contrast is not None:
        convert(image, alpha=contrast)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if saturation is not None:
        convert(image[:, :, 1], alpha=saturation)
    if hue is not None:
        shifted = image[:, :, 0].astype(int) + hue
        image[:, :, 0] = shifted % 180
    image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
    if not contrast_first and contrast is not None:
        convert(image, alpha=contrast)
    return image
