"""Average precision of face detections at one IoU, over a set of images: the
validation measure of training (all faces count, as in WIDER FACE's "hard" setting
without its ignore lists)."""

from typing import Sequence

import numpy as np
import torch

from ..ops import box_iou


def average_precision(detections: Sequence, ground_truth: Sequence, iou_threshold: float = 0.5) -> float:
    """VOC-style AP (area under the precision envelope, every recall point).

    ``detections[i]`` is ``(boxes [K, 4], scores [K])`` for image i and
    ``ground_truth[i]`` its faces ``[G, 4]`` (x1 y1 x2 y2, the same units). Each
    detection, best score first, takes the unmatched face it overlaps most if the IoU
    reaches ``iou_threshold``; otherwise it is a false positive.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"average_precision: {len(detections)} images of detections, {len(ground_truth)} of faces")
    scores, hits = [], []
    total = 0
    for (boxes, image_scores), faces in zip(detections, ground_truth):
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        image_scores = torch.as_tensor(image_scores, dtype=torch.float64).reshape(-1)
        faces = torch.as_tensor(faces, dtype=torch.float64).reshape(-1, 4)
        total += len(faces)
        order = torch.argsort(image_scores, descending=True, stable=True)
        ranked_scores = image_scores[order].tolist()
        if len(faces) == 0 or len(boxes) == 0:
            scores.extend(ranked_scores)
            hits.extend([False] * len(ranked_scores))
            continue
        overlaps = box_iou(boxes[order], faces).numpy()
        matched = np.zeros(len(faces), dtype=bool)
        for rank, score in enumerate(ranked_scores):
            candidates = np.where(matched, -1.0, overlaps[rank])
            best = int(candidates.argmax())
            hit = bool(candidates[best] >= iou_threshold)
            matched[best] |= hit
            scores.append(score)
            hits.append(hit)
    if total == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    true_positives = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    precision = true_positives / np.arange(1, len(order) + 1)
    recall = true_positives / total
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float((recall_steps * envelope).sum())
