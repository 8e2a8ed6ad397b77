"""WIDER FACE evaluation: the protocol by hand, against a transcription of the widely
used port, and on the full official val ground truth."""

import pathlib

import numpy as np
import pytest
import widerface_port

from retinaface_ext.evaluation import widerface
from retinaface_ext.evaluation.widerface import GroundTruth, GroundTruthImage, evaluate

GT_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "widerface_gt"
needs_gt = pytest.mark.skipif(not GT_DIR.exists(), reason="../shared/widerface_gt missing")


@pytest.fixture(scope="module")
def ground_truth():
    return widerface.load_ground_truth(GT_DIR)


def sorted_rows(boxes, scores):
    order = np.argsort(-scores, kind="stable")
    return np.concatenate([boxes, scores[:, None]], axis=1)[order]


def proper(boxes):
    """Boxes that overlap themselves: the val set holds one of width -2, which no
    prediction can match (it would be a false positive) and which is never recalled."""
    return (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0)


def exact(ground_truth, seed=0):
    """One prediction per distinct proper ground-truth box (a second prediction for a
    duplicated box would match the first copy again: a false positive)."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for image in ground_truth.images:
        boxes = np.unique(image.boxes[proper(image.boxes)], axis=0)
        predictions[image.name] = sorted_rows(boxes, rng.uniform(0.3, 1.0, len(boxes)))
    return predictions


def test_hand_worked_case():
    """Two kept faces and one outside the setting. Predictions: face 1 (0.9), the face
    outside the setting (0.85, ignored), a false positive (0.8), face 2 (0.7).
    Normalised scores 1, 0.75, 0.5, 0: above 0.5 one proposal recalls one face (P 1,
    R 0.5); down to 0.5 two proposals (P 0.5); at 0 three proposals recall both (P 2/3,
    R 1). The envelope gives AP = 0.5 * 1 + 0.5 * 2/3 = 5/6."""
    boxes = np.array([[10, 10, 20, 20], [100, 100, 30, 30], [200, 10, 15, 15]], dtype=np.float64)
    keep = {s: np.array([0, 1]) for s in widerface.SETTINGS}
    truth = GroundTruth([GroundTruthImage("0--Event", "img", boxes, keep)])
    predictions = {
        "img": np.array(
            [[10, 10, 20, 20, 0.9], [200, 10, 15, 15, 0.85], [400, 400, 20, 20, 0.8], [100, 100, 30, 30, 0.7]]
        )
    }
    result = evaluate(predictions, truth)
    for setting in widerface.SETTINGS:
        assert result.ap[setting] == pytest.approx(5 / 6, abs=1e-12)
        assert result.faces[setting] == 2
    assert result.precision["easy"][0] == 1 and result.recall["easy"][0] == 0.5
    assert result.precision["easy"][-1] == pytest.approx(2 / 3) and result.recall["easy"][-1] == 1
    assert result.ap["easy"] == pytest.approx(widerface_port.evaluation(predictions, truth)["easy"], abs=1e-12)
    # The same predictions in another order, or named with an extension, change nothing.
    shuffled = {"img.jpg": predictions["img"][[2, 0, 3, 1]]}
    assert evaluate(shuffled, truth).ap == result.ap


def test_a_face_counts_once_and_unmatched_settings_ignore():
    boxes = np.array([[0, 0, 50, 50]], dtype=np.float64)
    truth = GroundTruth(
        [
            GroundTruthImage(
                "e", "a", boxes, {"easy": np.array([], dtype=np.int64), "medium": np.array([0]), "hard": np.array([0])}
            )
        ]
    )
    twice = {"a": np.array([[0, 0, 50, 50, 0.9], [1, 1, 50, 50, 0.8]])}
    result = evaluate(twice, truth)
    # medium: the duplicate is a false positive: P drops to 1/2 at full recall after recall 1 at P 1.
    assert result.ap["medium"] == pytest.approx(1.0)
    assert result.precision["medium"][-1] == pytest.approx(0.5)
    # easy keeps no face: both predictions are ignored, no proposals, AP 0.
    assert result.ap["easy"] == 0 and result.faces["easy"] == 0


def port_subset(ground_truth, count=60, max_faces=40):
    small = [im for im in ground_truth.images if 0 < len(im.boxes) <= max_faces]
    step = max(1, len(small) // count)
    return GroundTruth(small[::step][:count] + [im for im in ground_truth.images if len(im.boxes) == 0][:2])


@needs_gt
@pytest.mark.parametrize("kind", ["exact", "jittered", "false_positives", "shifted", "missing", "constant_ties"])
def test_equals_the_port_on_constructed_predictions(ground_truth, kind):
    subset = port_subset(ground_truth)
    rng = np.random.default_rng(1)
    predictions = {}
    for image in subset.images:
        boxes = image.boxes.copy()
        scores = rng.uniform(0, 1, len(boxes))
        if kind in ("jittered", "false_positives", "missing"):
            boxes[:, :2] += rng.normal(0, 0.15, (len(boxes), 2)) * boxes[:, 2:]
            boxes[:, 2:] *= rng.uniform(0.7, 1.3, (len(boxes), 2))
        if kind == "false_positives":
            extra = rng.uniform(0, 900, (len(boxes) + 3, 4))
            extra[:, 2:] = rng.uniform(5, 80, (len(extra), 2))
            boxes = np.concatenate([boxes, extra])
            scores = np.concatenate([scores, rng.uniform(0, 1, len(extra))])
        if kind == "shifted":
            boxes[:, 0] += (boxes[:, 2] + 1) / 3 * rng.choice([0.97, 1.03], len(boxes))
        if kind == "constant_ties":
            scores = np.round(scores * 4) / 4
        if kind == "missing" and rng.uniform() < 0.3:
            continue
        predictions[image.name] = sorted_rows(boxes, scores)
    if kind == "missing":
        for image in subset.images:
            predictions.setdefault(image.name, np.zeros((0, 5)))  # the port needs every key
    ours = evaluate(predictions, subset)
    port = widerface_port.evaluation(predictions, subset)
    for setting in widerface.SETTINGS:
        assert ours.ap[setting] == pytest.approx(port[setting], abs=1e-12), setting
    assert 0 < ours.ap["hard"] <= 1


def expected_recall(ground_truth, setting, images=None):
    """Recall of exact boxes: a kept face is found unless an identical box comes before it
    (the prediction then matches that one) or it is not a proper box."""
    found = 0
    for image in ground_truth.images:
        if images is not None and image.name not in images:
            continue
        for index in image.keep[setting]:
            earlier = image.boxes[:index]
            if not proper(image.boxes[index : index + 1])[0]:
                continue
            if not np.any(np.all(earlier == image.boxes[index], axis=1)):
                found += 1
    return found / ground_truth.faces(setting)


@needs_gt
def test_full_val_set_with_exact_and_shifted_boxes(ground_truth):
    assert len(ground_truth.images) == 3226
    assert [ground_truth.faces(s) for s in widerface.SETTINGS] == [7211, 13319, 31958]
    exact_predictions = exact(ground_truth)
    result = evaluate(exact_predictions, ground_truth)
    for setting in widerface.SETTINGS:
        # Precision is 1 everywhere (a box outside the setting is ignored), so AP = recall.
        assert result.ap[setting] == pytest.approx(expected_recall(ground_truth, setting), abs=1e-12)
        assert result.ap[setting] > 0.999

    def shifted(fraction):
        moved = {}
        for name, rows in exact_predictions.items():
            rows = rows.copy()
            rows[:, 0] += (rows[:, 2] + 1) * fraction  # IoU (W - d) / (W + d) with W = w + 1
            moved[name] = rows
        return moved

    above = evaluate(shifted(1 / 3 - 0.01), ground_truth)  # IoU just above 0.5
    below = evaluate(shifted(1 / 3 + 0.01), ground_truth)  # just below
    for setting in widerface.SETTINGS:
        # In crowds a shifted box can overlap a neighbour more than its own face.
        assert above.ap[setting] == pytest.approx(result.ap[setting], abs=0.01)
        assert below.ap[setting] < 0.01


@needs_gt
def test_full_val_set_with_false_positives_and_missing_images(ground_truth):
    exact_predictions = exact(ground_truth)
    base = evaluate(exact_predictions, ground_truth)
    rng = np.random.default_rng(2)

    def with_false_positives(low, high):
        out = {}
        for name, rows in exact_predictions.items():
            fp = np.column_stack([rng.uniform(5000, 6000, (10, 2)), np.full((10, 2), 20.0), rng.uniform(low, high, 10)])
            out[name] = np.concatenate([rows, fp])
        return out

    below = evaluate(with_false_positives(0.0, 0.29), ground_truth)
    above = evaluate(with_false_positives(1.01, 1.2), ground_truth)
    for setting in widerface.SETTINGS:
        # False positives ranked below every face cannot lower the envelope; above, they do.
        assert below.ap[setting] == pytest.approx(base.ap[setting], abs=1e-9)
        assert above.ap[setting] < base.ap[setting] - 0.05

    kept_names = {im.name for i, im in enumerate(ground_truth.images) if i % 2 == 0}
    half = {name: rows for name, rows in exact_predictions.items() if name in kept_names}
    result = evaluate(half, ground_truth)
    assert result.missing_images == 3226 - len(kept_names)
    for setting in widerface.SETTINGS:
        assert result.ap[setting] == pytest.approx(expected_recall(ground_truth, setting, kept_names), abs=1e-12)


def test_prediction_files_round_trip(tmp_path):
    rows = np.array([[1.5, 2.25, 30.0, 40.0, 0.987654321], [0, 0, 1, 1, 0.02]])
    path = tmp_path / "0--Parade" / "0_Parade_1.txt"
    widerface.write_prediction_file(path, "0_Parade_1", rows)
    name, read = widerface.read_prediction_file(path)
    assert name == "0_Parade_1"
    np.testing.assert_allclose(read, rows, atol=5e-3, rtol=1e-7)
    widerface.write_prediction_file(tmp_path / "1--Handshaking" / "empty.txt", "empty", np.zeros((0, 5)))
    folder = widerface.read_prediction_dir(tmp_path)
    assert set(folder) == {"0_Parade_1", "empty"} and folder["empty"].shape == (0, 5)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "image name on line 1"),
        ("a\nthree\n", r":2: expected the number of faces"),
        ("a\n1\n1 2 3 4\n", r":3: expected 'x y w h score'"),
        ("a\n1\n1 2 3 4 nan\n", r":3: expected"),
        ("a\n2\n1 2 3 4 0.5\n", "announces 2 faces but 1 follow"),
    ],
)
def test_malformed_prediction_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        widerface.read_prediction_file(path)


def test_missing_folders_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        widerface.read_prediction_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="no prediction files"):
        widerface.read_prediction_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="wider_face_val.mat: missing"):
        widerface.load_ground_truth(tmp_path)
    with pytest.raises(ValueError, match=r"predictions\['x'\]: expected \[N, 5\]"):
        evaluate({"x": np.zeros((3, 4))}, GroundTruth([]))


@needs_gt
def test_pr_curve_plot(tmp_path, ground_truth):
    pytest.importorskip("matplotlib")
    result = evaluate(exact(ground_truth), ground_truth)
    path = tmp_path / "pr.png"
    widerface.plot_pr_curves(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("iou", [0.0, -0.5, 1.5, float("nan")])
def test_an_iou_threshold_outside_0_1_is_refused(iou):
    """With IoU 0, boxes 5,000 px from every face once scored AP 0.14."""
    boxes = np.array([[10, 10, 20, 20]], dtype=np.float64)
    truth = GroundTruth([GroundTruthImage("0--Event", "img", boxes, {s: np.array([0]) for s in widerface.SETTINGS})])
    far = {"img": np.array([[5000, 5000, 20, 20, 0.9]])}
    assert evaluate(far, truth).ap["easy"] == 0
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\]"):
        evaluate(far, truth, iou_threshold=iou)
