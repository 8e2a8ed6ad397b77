"""What a training run measures when it validates: AP at IoU 0.5 over every face of its
validation set, and WIDER FACE's easy / medium / hard APs where asked, with a Detector on
the run's model (the same prediction loop as ``retinaface widerface-predict``)."""

import contextlib
import time
from typing import Dict, Optional

import torch

from ..evaluation.ap import average_precision
from ..evaluation.predict import predict_widerface, widerface_images
from ..evaluation.widerface import GroundTruth, evaluate, load_ground_truth
from ..targets import BOX


def read_widerface_ground_truth(folder: Optional[str]) -> Optional[GroundTruth]:
    """The WIDER FACE val ground truth, read when the run starts: broken .mat files are
    found before the first step, not at the first validation."""
    if folder is None:
        return None
    try:
        return load_ground_truth(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"--widerface-gt {folder}: {error}") from error


def validation_metrics(
    detector, val_set, widerface_val: Optional[str] = None, ground_truth: Optional[GroundTruth] = None
) -> Dict[str, float]:
    """``ap50`` over ``val_set`` (a WiderFaceDataset), ``easy``, ``medium`` and ``hard``
    over ``widerface_val`` (WIDER_val/images) when given, and the ``seconds`` it took."""
    started = time.perf_counter()
    detections, faces = [], []
    for index in range(len(val_set)):
        image, target = val_set[index]
        found = detector.detect(image)
        detections.append((found.boxes.cpu(), found.scores.cpu()))
        faces.append(target[:, BOX])
    metrics = {"ap50": average_precision(detections, faces, 0.5)}
    if widerface_val:
        predictions = {name: rows for _, name, rows in predict_widerface(detector, widerface_images(widerface_val))}
        result = evaluate(predictions, ground_truth)
        metrics.update({setting: result.ap[setting] for setting in ("easy", "medium", "hard")})
    metrics["seconds"] = time.perf_counter() - started
    return metrics


@contextlib.contextmanager
def fixed_algorithms():
    """cuDNN's autotuner off (``torch.backends.cudnn.benchmark``) for what runs inside:
    validation images come in many sizes, and autotuning each new one cost more than
    the whole validation (81 s of the first on an H200). Restored on the way out."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
