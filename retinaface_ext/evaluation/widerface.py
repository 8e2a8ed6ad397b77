"""WIDER FACE validation AP on the easy, medium and hard settings.

The protocol of the widely used Python port of the official MATLAB evaluation (the one
Pytorch_Retinaface ships), vectorised so that the 3,226 val images take seconds:

- scores are normalised by min-max over all predictions of the set;
- per image, each prediction in decreasing score order takes the ground-truth box it
  overlaps most (IoU with "+1 pixel" areas); at IoU >= 0.5 a box outside the setting's
  keep list makes the prediction ignored, a kept box counts as recalled the first time;
- at 1,000 thresholds t = 1 - k/1000 the proposals and recalled faces of all images are
  summed; precision = recalled / proposals, recall = recalled / faces in the setting;
- AP is the area under the precision envelope over the recall steps (the VOC rule).

Predictions are ``[N, 5]`` arrays of x, y, w, h, score per image name (no extension).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..files import atomic_write_text

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}


@dataclass
class GroundTruthImage:
    event: str
    name: str
    boxes: np.ndarray  # [G, 4] x, y, w, h (float64)
    keep: Dict[str, np.ndarray]  # setting -> 0-based indices of the boxes it counts


@dataclass
class GroundTruth:
    images: List[GroundTruthImage]

    def faces(self, setting: str) -> int:
        return sum(len(image.keep[setting]) for image in self.images)


def load_ground_truth(gt_dir: Union[str, os.PathLike]) -> GroundTruth:
    """The official val ground truth from ``wider_face_val.mat`` and the three
    ``wider_<setting>_val.mat`` keep lists in ``gt_dir``."""
    try:
        from scipy.io import loadmat
    except ImportError as error:  # pragma: no cover - scipy is a dependency
        raise ImportError("reading the WIDER FACE .mat files needs scipy: pip install scipy") from error
    gt_dir = os.fspath(gt_dir)
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    mats = {}
    for key, filename in GT_FILES.items():
        path = os.path.join(gt_dir, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: missing (the WIDER FACE val ground truth needs {', '.join(GT_FILES.values())})"
            )
        try:
            mats[key] = loadmat(path)
        except Exception as error:
            raise ValueError(f"{path}: not a readable MATLAB file ({error})") from error
    reading = "all"
    try:
        events, files, boxes = (mats["all"][k] for k in ("event_list", "file_list", "face_bbx_list"))
        images = []
        for e in range(len(events)):
            event = str(events[e][0][0])
            for j in range(len(files[e][0])):
                keep = {}
                for setting in SETTINGS:
                    reading = setting
                    keep[setting] = mats[setting]["gt_list"][e][0][j][0].astype(np.int64).reshape(-1) - 1
                reading = "all"
                images.append(
                    GroundTruthImage(
                        event, str(files[e][0][j][0][0]), boxes[e][0][j][0].astype(np.float64).reshape(-1, 4), keep
                    )
                )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        path = os.path.join(gt_dir, GT_FILES[reading])
        what = f"no {error.args[0]!r} variable" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"{path}: not the WIDER FACE val ground truth layout ({what})") from None
    return GroundTruth(images)


# ---------------------------------------------------------------- prediction files


def write_prediction_file(path: Union[str, os.PathLike], image_name: str, detections) -> None:
    """Write one image's ``[N, 5]`` x, y, w, h, score rows in the standard layout (name,
    count, one row per face), via a temporary file so that no half-written file remains."""
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    path = os.fspath(path)
    lines = [image_name, str(len(detections))]
    lines += [f"{x:.2f} {y:.2f} {w:.2f} {h:.2f} {s:.8g}" for x, y, w, h, s in detections]
    atomic_write_text(path, "\n".join(lines) + "\n", durable=False)


def read_prediction_file(path: Union[str, os.PathLike]) -> Tuple[str, np.ndarray]:
    """(image name, ``[N, 5]`` float64) of one prediction file. A malformed file raises
    ValueError naming the file and line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: a folder where a prediction file was expected")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text prediction file ({error})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected the image name on line 1 and the face count on line 2")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise ValueError(f"{path}:2: expected the number of faces, got {lines[1]!r}") from None
    rows = []
    for number, line in enumerate(lines[2:], start=3):
        values = line.split()
        try:
            row = [float(v) for v in values]
        except ValueError:
            row = []
        if len(row) != 5 or not np.all(np.isfinite(row)):
            raise ValueError(f"{path}:{number}: expected 'x y w h score' (5 numbers), got {line!r}")
        rows.append(row)
    if len(rows) != count:
        raise ValueError(f"{path}: line 2 announces {count} faces but {len(rows)} follow")
    return os.path.basename(lines[0].strip()), np.array(rows, dtype=np.float64).reshape(-1, 5)


def read_prediction_dir(pred_dir: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """All ``<pred_dir>/<event>/<image name>.txt`` files, by image name."""
    pred_dir = os.fspath(pred_dir)
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    predictions = {}
    for event in sorted(os.listdir(pred_dir)):
        event_dir = os.path.join(pred_dir, event)
        if not os.path.isdir(event_dir):
            continue
        for filename in sorted(os.listdir(event_dir)):
            if filename.endswith(".txt") and not filename.startswith("."):
                _, rows = read_prediction_file(os.path.join(event_dir, filename))
                predictions[filename[:-4]] = rows
    if not predictions:
        raise ValueError(f"{pred_dir}: no prediction files (<event>/<image name>.txt)")
    return predictions


# ---------------------------------------------------------------- the protocol


@dataclass
class EvaluationResult:
    ap: Dict[str, float]
    precision: Dict[str, np.ndarray]  # [thresholds], highest threshold first
    recall: Dict[str, np.ndarray]
    faces: Dict[str, int]
    images: int
    missing_images: int  # val images without predictions (counted as none)
    unknown_images: int = 0  # predicted images that are not in the ground truth
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __str__(self) -> str:
        lines = [f"{s.capitalize():6s} AP: {self.ap[s]:.4f}  ({self.faces[s]} faces)" for s in SETTINGS]
        lines.append(f"{self.images} images, {self.missing_images} without predictions")
        return "\n".join(lines)


def _normalised_scores(predictions: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    # As the port: min starts at 1 and max at 0, then (s - min) / (max - min).
    low, high = 1.0, 0.0
    for rows in predictions.values():
        if len(rows):
            low, high = min(low, float(rows[:, 4].min())), max(high, float(rows[:, 4].max()))
    span = high - low
    if span <= 0:  # the port divides by zero here; every prediction passes every threshold
        return {name: np.ones(len(rows)) for name, rows in predictions.items()}
    return {name: (rows[:, 4] - low) / span for name, rows in predictions.items()}


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[N, G]`` IoU of x1y1x2y2 boxes with "+1 pixel" areas (the port's bbox_overlaps)."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    pred_area = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    gt_area = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (pred_area[:, None] + gt_area[None, :] - inter)
    return np.where(inter > 0, iou, 0.0)


def _image_counts(rows, scores, gt_boxes, keep, iou_threshold):
    """Per prediction (decreasing score): does it count as a proposal, and does it recall a
    new face, for each setting."""
    order = np.argsort(-scores, kind="stable")
    pred = rows[order, :4].copy()
    pred[:, 2:] += pred[:, :2]
    gt = gt_boxes.copy()
    gt[:, 2:] += gt[:, :2]
    iou = _overlaps(pred, gt)
    best = iou.argmax(1)
    matched = iou[np.arange(len(best)), best] >= iou_threshold
    counts = {}
    for setting in SETTINGS:
        kept = np.zeros(len(gt), dtype=bool)
        kept[keep[setting]] = True
        proposal = ~(matched & ~kept[best])
        recalling = np.flatnonzero(matched & kept[best])
        _, first = np.unique(best[recalling], return_index=True)
        recalled = np.zeros(len(best))
        recalled[recalling[first]] = 1
        counts[setting] = (proposal.astype(np.float64), recalled)
    return scores[order], counts


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate(
    predictions: Union[Mapping[str, np.ndarray], str, os.PathLike],
    ground_truth: Union[GroundTruth, str, os.PathLike],
    iou_threshold: float = 0.5,
    thresholds: int = 1000,
    predicted_only: bool = False,
) -> EvaluationResult:
    """Easy / medium / hard AP of ``predictions`` (a mapping of image name to ``[N, 5]``
    x, y, w, h, score, or a prediction folder) against ``ground_truth`` (a GroundTruth or
    the folder of the four .mat files). ``predicted_only``: only the images that have
    predictions count (their faces of each setting, as the protocol defines them), for a
    subset of the val set; else the val images without predictions count as finding
    nothing."""
    if not 0.0 < iou_threshold <= 1.0:  # also refuses NaN
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if isinstance(thresholds, bool) or not isinstance(thresholds, (int, np.integer)) or thresholds < 1:
        raise ValueError(f"thresholds must be an integer >= 1, got {thresholds!r}")
    if not isinstance(predictions, Mapping):
        predictions = read_prediction_dir(predictions)
    if not isinstance(ground_truth, GroundTruth):
        ground_truth = load_ground_truth(ground_truth)
    cleaned = {}
    for name, rows in predictions.items():
        rows = np.asarray(rows, dtype=np.float64)
        if rows.size == 0:
            rows = rows.reshape(0, 5)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(f"predictions[{name!r}]: expected [N, 5] x, y, w, h, score, got {list(rows.shape)}")
        cleaned[os.path.splitext(name)[0] if name.endswith((".jpg", ".png")) else name] = rows
    scores = _normalised_scores(cleaned)
    if predicted_only:
        ground_truth = GroundTruth([image for image in ground_truth.images if image.name in cleaned])
        if not ground_truth.images:
            raise ValueError("predicted_only: none of the predicted images is in the ground truth")

    gathered = {s: ([], [], []) for s in SETTINGS}
    missing = 0
    for image in ground_truth.images:
        rows = cleaned.get(image.name)
        if rows is None:
            missing += 1
            continue
        if len(rows) == 0 or len(image.boxes) == 0:
            continue  # as the port: nothing to match, nothing counted
        sorted_scores, counts = _image_counts(rows, scores[image.name], image.boxes, image.keep, iou_threshold)
        for setting, (proposal, recalled) in counts.items():
            gathered[setting][0].append(sorted_scores)
            gathered[setting][1].append(proposal)
            gathered[setting][2].append(recalled)

    levels = 1 - np.arange(1, thresholds + 1) / thresholds
    result = EvaluationResult(
        {},
        {},
        {},
        {},
        len(ground_truth.images),
        missing,
        len(set(cleaned) - {i.name for i in ground_truth.images}),
        levels,
    )
    for setting in SETTINGS:
        faces = ground_truth.faces(setting)
        all_scores, proposals, recalled = (
            np.concatenate(parts) if parts else np.zeros(0) for parts in gathered[setting]
        )
        order = np.argsort(-all_scores, kind="stable")
        passing = np.searchsorted(-all_scores[order], -levels, side="right")  # scores >= level
        proposed = np.concatenate(([0.0], np.cumsum(proposals[order])))[passing]
        found = np.concatenate(([0.0], np.cumsum(recalled[order])))[passing]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(proposed > 0, found / np.maximum(proposed, 1), 0.0)
        recall = found / faces if faces else np.zeros_like(found)
        result.precision[setting], result.recall[setting] = precision, recall
        result.faces[setting] = faces
        result.ap[setting] = _voc_ap(recall, precision)
    return result


def plot_pr_curves(result: EvaluationResult, path: Union[str, os.PathLike], title: Optional[str] = None) -> None:
    """One PNG with the precision-recall curves of the three settings, AP in the legend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from error
    figure, axes = plt.subplots(figsize=(6, 5))
    for setting in SETTINGS:
        axes.plot(result.recall[setting], result.precision[setting], label=f"{setting} AP {result.ap[setting]:.4f}")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title or "WIDER FACE val")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)
    plt.close(figure)
