"""`retinaface widerface-predict` and `retinaface eval` end to end, on a small WIDER-like
set with a ground truth in the official .mat layout."""

import json

import cv2
import numpy as np
import pytest
from cli_run import one_line_error
from cli_run import run_cli as run
from shared_data import CROWD, EXPECTED, WEIGHTS

pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def write_ground_truth(folder, images):
    """A small ground truth in the official .mat layout: images = [(event, name, boxes xywh)],
    every face in every setting."""
    from scipy.io import savemat

    events = sorted({event for event, _, _ in images})

    def cells(values):
        array = np.empty((len(values), 1), dtype=object)
        for i, value in enumerate(values):
            array[i, 0] = value
        return array

    per_event = {e: [(n, b) for ev, n, b in images if ev == e] for e in events}
    common = {
        "event_list": cells([np.array([e]) for e in events]),
        "file_list": cells([cells([np.array([n]) for n, _ in per_event[e]]) for e in events]),
        "face_bbx_list": cells(
            [cells([np.asarray(b, dtype=np.int32).reshape(-1, 4) for _, b in per_event[e]]) for e in events]
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "wider_face_val.mat", common)
    keep = cells(
        [cells([np.arange(1, len(b) + 1, dtype=np.uint16).reshape(-1, 1) for _, b in per_event[e]]) for e in events]
    )
    for setting in ("easy", "medium", "hard"):
        savemat(folder / f"wider_{setting}_val.mat", {**common, "gt_list": keep})


def test_widerface_predict_then_eval_on_a_small_wider_like_set(tmp_path, capsys):
    crowd = cv2.imread(str(CROWD))
    images = tmp_path / "WIDER_val" / "images"
    (images / "0--Parade").mkdir(parents=True)
    (images / "1--Handshaking").mkdir(parents=True)
    cv2.imwrite(str(images / "0--Parade" / "0_Parade_1.jpg"), crowd)
    cv2.imwrite(str(images / "1--Handshaking" / "1_Handshaking_2.jpg"), crowd[:, :512])
    rows = np.array(json.loads(EXPECTED.read_text())["detections"])
    faces = rows[rows[:, 4] >= 0.5, :4]
    xywh = np.column_stack([faces[:, :2], faces[:, 2:] - faces[:, :2]]).round()
    left = xywh[faces[:, 2] < 500]
    write_ground_truth(
        tmp_path / "gt", [("0--Parade", "0_Parade_1", xywh), ("1--Handshaking", "1_Handshaking_2", left)]
    )

    predictions = tmp_path / "pred"
    code, out, err = run(capsys, "widerface-predict", "--weights", WEIGHTS, "--images", images, "--out", predictions)
    assert code == 0, err
    assert "wrote 2 prediction files" in out
    lines = (predictions / "0--Parade" / "0_Parade_1.txt").read_text().splitlines()
    assert lines[0] == "0_Parade_1" and int(lines[1]) == len(lines) - 2 > 100

    plot = tmp_path / "pr.png"
    code, out, err = run(capsys, "eval", "--pred", predictions, "--gt", tmp_path / "gt", "--plot", plot)
    assert code == 0, err
    aps = {line.split()[0]: float(line.split()[2]) for line in out.splitlines() if " AP: " in line}
    assert set(aps) == {"Easy", "Medium", "Hard"} and min(aps.values()) > 0.9
    assert "2 images, 0 without predictions" in out
    assert plot.exists()

    # Resized testing (the multi-scale protocol) writes the same layout.
    code, _, err = run(
        capsys,
        "widerface-predict",
        "--weights",
        WEIGHTS,
        "--images",
        images,
        "--out",
        tmp_path / "pred_resized",
        "--target-size",
        "400",
        "--max-size",
        "700",
    )
    assert code == 0, err
    assert (tmp_path / "pred_resized" / "1--Handshaking" / "1_Handshaking_2.txt").exists()


@pytest.mark.parametrize("iou", ["0", "-0.5", "1.5", "nan"])
def test_eval_iou_must_be_an_iou(tmp_path, capsys, iou):
    code, _, err = run(capsys, "eval", "--pred", tmp_path, "--gt", tmp_path, "--iou", iou)
    one_line_error(code, err, "--iou")


def small_wider(tmp_path):
    """Two WIDER-like val images and a ground truth in which every confident face counts."""
    crowd = cv2.imread(str(CROWD))
    images = tmp_path / "WIDER_val" / "images"
    (images / "0--Parade").mkdir(parents=True)
    cv2.imwrite(str(images / "0--Parade" / "0_Parade_1.jpg"), crowd[:, :400])
    cv2.imwrite(str(images / "0--Parade" / "0_Parade_2.jpg"), crowd[:300, 500:])
    rows = np.array(json.loads(EXPECTED.read_text())["detections"])
    faces = rows[rows[:, 4] >= 0.5, :4]
    xywh = np.column_stack([faces[:, :2], faces[:, 2:] - faces[:, :2]]).round()
    write_ground_truth(
        tmp_path / "gt", [("0--Parade", "0_Parade_1", xywh[faces[:, 2] < 400]), ("0--Parade", "0_Parade_2", xywh[:3])]
    )
    return images, tmp_path / "gt"


def test_widerface_predict_refuses_to_mix_runs(tmp_path, capsys):
    images, gt = small_wider(tmp_path)
    pred = tmp_path / "pred"
    predict = ["widerface-predict", "--weights", WEIGHTS, "--images", images, "--out", pred]
    code, _, err = run(capsys, *predict, "--target-size", "300")
    assert code == 0, err
    first = (pred / "0--Parade" / "0_Parade_1.txt").read_text()
    code, _, err = run(capsys, *predict)  # the original size: another run
    one_line_error(code, err, "holds predictions of another run", "target_size: 300", "--overwrite")
    assert (pred / "0--Parade" / "0_Parade_1.txt").read_text() == first
    code, _, err = run(capsys, *predict, "--target-size", "300")  # the same settings again: fine
    assert code == 0, err
    code, _, err = run(capsys, *predict, "--overwrite")
    assert code == 0, err
    assert (pred / "0--Parade" / "0_Parade_1.txt").read_text() != first
    code, out, err = run(capsys, "eval", "--pred", pred, "--gt", gt)
    assert code == 0 and "warning" not in out, out + err

    # A file from elsewhere in the folder, and a run that did not finish: eval says so.
    (pred / "0--Parade" / "0_Parade_2.txt").write_text("0_Parade_2\n1\n1 2 3 4 0.9\n")
    record = json.loads((pred / "retinaface-predict.json").read_text())
    record["status"] = "interrupted"
    (pred / "retinaface-predict.json").write_text(json.dumps(record))
    code, out, err = run(capsys, "eval", "--pred", pred, "--gt", gt)
    assert code == 0, err
    assert "warning: 1 prediction files (e.g. 0--Parade/0_Parade_2.txt) were not written by the run" in out
    assert "did not finish (status 'interrupted')" in out


def test_widerface_predict_into_a_folder_of_unrecorded_predictions(tmp_path, capsys):
    images, _ = small_wider(tmp_path)
    pred = tmp_path / "pred"
    (pred / "0--Parade").mkdir(parents=True)
    (pred / "0--Parade" / "0_Parade_1.txt").write_text("0_Parade_1\n0\n")
    predict = ["widerface-predict", "--weights", WEIGHTS, "--images", images, "--out", pred]
    code, _, err = run(capsys, *predict)
    one_line_error(code, err, "an unrecorded run")
    code, _, err = run(capsys, *predict, "--overwrite", "--max-size", "250")  # --max-size alone caps the size
    assert code == 0, err
    record = json.loads((pred / "retinaface-predict.json").read_text())
    assert record["status"] == "complete" and record["settings"]["max_size"] == 250
    assert record["settings"]["target_size"] is None and len(record["files"]) == 2


def test_widerface_predict_size_options(tmp_path, capsys):
    images, _ = small_wider(tmp_path)
    predict = ["widerface-predict", "--weights", WEIGHTS, "--images", images]
    code, _, err = run(capsys, *predict, "--out", tmp_path / "a", "--target-size", "320")
    assert code == 0, err
    settings = json.loads((tmp_path / "a" / "retinaface-predict.json").read_text())["settings"]
    assert (settings["target_size"], settings["max_size"]) == (320, 2150)  # the protocol's cap by default
    code, _, err = run(capsys, *predict, "--out", tmp_path / "b", "--origin-size", "--target-size", "320")
    one_line_error(code, err, "--origin-size and --target-size contradict")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, *predict, "--out", blocker / "pred")
    one_line_error(code, err, "a file, not a folder")


def test_eval_names_broken_prediction_files_and_ground_truth(tmp_path, capsys):
    _, gt = small_wider(tmp_path)
    pred = tmp_path / "pred"
    (pred / "0--Parade" / "0_Parade_1.txt").mkdir(parents=True)  # a folder named like a prediction file
    code, _, err = run(capsys, "eval", "--pred", pred, "--gt", gt)
    one_line_error(code, err, "0_Parade_1.txt: a folder where a prediction file was expected")
    (pred / "0--Parade" / "0_Parade_1.txt").rmdir()
    (pred / "0--Parade" / "0_Parade_1.txt").write_bytes(b"\xff\xfe\x00\x81binary")
    code, _, err = run(capsys, "eval", "--pred", pred, "--gt", gt)
    one_line_error(code, err, "0_Parade_1.txt: not a text prediction file")
    (pred / "0--Parade" / "0_Parade_1.txt").write_text("0_Parade_1\n0\n")
    from scipy.io import savemat

    savemat(gt / "wider_hard_val.mat", {"something_else": np.zeros(3)})
    code, _, err = run(capsys, "eval", "--pred", pred, "--gt", gt)
    one_line_error(code, err, "wider_hard_val.mat: not the WIDER FACE val ground truth layout", "gt_list")


def test_the_prediction_loop_from_python_is_the_commands(tmp_path):
    """evaluation.predict (what the command and the training's validation call): the
    images of every event with an image extension, in order, each with the Detector's
    faces as x, y, w, h, score rows, batched or not."""
    from retinaface_ext import Detector
    from retinaface_ext.evaluation.predict import predict_widerface, widerface_images
    from retinaface_ext.models import DetectionSettings

    crowd = cv2.imread(str(CROWD))
    for event, name, crop in (("0--Parade", "a", crowd[:300]), ("0--Parade", "b", crowd[100:]), ("9--X", "c", crowd)):
        (tmp_path / event).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / event / f"{name}.jpg"), crop)
    (tmp_path / "9--X" / "notes.txt").write_text("not an image")
    images = widerface_images(str(tmp_path))
    assert [(event, name.rsplit("/", 1)[-1]) for event, name in images] == [
        ("0--Parade", "a.jpg"),
        ("0--Parade", "b.jpg"),
        ("9--X", "c.jpg"),
    ]
    detector = Detector(str(WEIGHTS), device="cpu", settings=DetectionSettings(score_threshold=0.3))
    one = list(predict_widerface(detector, images, batch_size=1))
    three = list(predict_widerface(detector, images, batch_size=3))
    assert [(e, n) for e, n, _ in one] == [("0--Parade", "a"), ("0--Parade", "b"), ("9--X", "c")]
    for (_, _, rows), (_, _, batched), (_, path) in zip(one, three, images):
        faces = detector.detect(path)
        assert rows.shape == (len(faces), 5) and len(faces) > 0 and rows[:, 4].min() > 0.3
        np.testing.assert_allclose(rows[:, 2:4], (faces.boxes[:, 2:] - faces.boxes[:, :2]).numpy(), atol=1e-3)
        np.testing.assert_allclose(batched, rows, atol=1e-3)
    with pytest.raises(ValueError, match="image folder not found"):
        widerface_images(str(tmp_path / "missing"))


def test_levels_are_recorded_and_a_subset_of_the_val_set_is_evaluated_alone(tmp_path, capsys):
    """Two of the real val photos with --scales auto --merge vote; eval over the whole val
    ground truth counts the other 3,224 images as finding nothing, --predicted-only not."""
    from shared_data import SHARED

    photos = sorted((SHARED / "images" / "widerface_val").glob("*.jpg"))[:2]
    if not photos or not (SHARED / "widerface_gt" / "wider_face_val.mat").exists():
        pytest.skip("../shared/images/widerface_val or the val ground truth missing")
    images = tmp_path / "images" / "0--Parade"
    images.mkdir(parents=True)
    for photo in photos:
        (images / photo.name).write_bytes(photo.read_bytes())
    predict = ["widerface-predict", "--weights", WEIGHTS, "--images", images.parent, "--out", tmp_path / "pred"]
    code, _, err = run(capsys, *predict, "--scales", "auto", "--merge", "vote")
    assert code == 0, err
    settings = json.loads((tmp_path / "pred" / "retinaface-predict.json").read_text())["settings"]
    assert (settings["scales"], settings["flip"], settings["merge"]) == ("auto", False, "vote")
    code, _, err = run(capsys, *predict)  # the single pass is another run
    one_line_error(code, err, "scales")

    def hard_ap(*flags):
        code, out, err = run(capsys, "eval", "--pred", tmp_path / "pred", "--gt", SHARED / "widerface_gt", *flags)
        assert code == 0, err
        return float(next(line.split()[2] for line in out.splitlines() if line.startswith("Hard")))

    assert hard_ap() < 0.05 and hard_ap("--predicted-only") > 0.85
    code, out, _ = run(capsys, "eval", "--pred", tmp_path / "pred", "--gt", SHARED / "widerface_gt", "--predicted-only")
    assert "2 images, 0 without predictions" in out
    code, _, err = run(capsys, *predict[:-1], tmp_path / "single")
    assert code == 0, err
    assert "scales" not in json.loads((tmp_path / "single" / "retinaface-predict.json").read_text())["settings"]


def test_predicted_only_with_no_predicted_image_in_the_ground_truth_is_named(tmp_path, capsys):
    _, gt = small_wider(tmp_path)
    (tmp_path / "pred" / "0--Parade").mkdir(parents=True)
    (tmp_path / "pred" / "0--Parade" / "elsewhere.txt").write_text("elsewhere\n0\n")
    code, _, err = run(capsys, "eval", "--pred", tmp_path / "pred", "--gt", gt, "--predicted-only")
    one_line_error(code, err, "predicted_only: none of the predicted images is in the ground truth")
