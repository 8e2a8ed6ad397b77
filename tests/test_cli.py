"""The `retinaface` command end to end."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from retinaface_ext import cli

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
EXPECTED = SHARED / "expected" / "widerface_crowd.mobilenet0.25.json"
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expected_faces(threshold):
    rows = json.loads(EXPECTED.read_text())["detections"]
    return sum(row[4] >= threshold for row in rows)


def test_detect_writes_annotated_images_and_json(tmp_path, capsys):
    code, out, err = run(capsys, "detect", CROWD, "--weights", WEIGHTS, "--out", tmp_path, "--json")
    assert code == 0, err
    record = json.loads((tmp_path / "widerface_crowd.json").read_text())
    assert len(record["faces"]) == expected_faces(0.6) > 20
    assert (record["width"], record["height"]) == (1024, 624)
    assert set(record["faces"][0]) == {"box", "score", "landmarks"}
    annotated = cv2.imread(str(tmp_path / "widerface_crowd.jpg"))
    assert annotated.shape == (624, 1024, 3)
    assert f"{len(record['faces'])} faces" in err


def test_detect_prints_json_lines_and_walks_folders(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(CROWD, folder / "a.jpg")
    cv2.imwrite(str(folder / "b.png"), cv2.imread(str(CROWD))[:300, :400])
    (folder / "notes.txt").write_text("not an image")
    code, out, _ = run(capsys, "detect", folder, "--weights", WEIGHTS, "--json", "--threshold", "0.5")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [os.path.basename(r["image"]) for r in records] == ["a.jpg", "b.png"]
    assert len(records[0]["faces"]) == expected_faces(0.5)


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
        "face_bbx_list": cells([cells([np.asarray(b, dtype=np.int32).reshape(-1, 4) for _, b in per_event[e]])
                                for e in events]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "wider_face_val.mat", common)
    keep = cells([cells([np.arange(1, len(b) + 1, dtype=np.uint16).reshape(-1, 1) for _, b in per_event[e]])
                  for e in events])
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
    write_ground_truth(tmp_path / "gt", [("0--Parade", "0_Parade_1", xywh), ("1--Handshaking", "1_Handshaking_2", left)])

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
    code, _, err = run(capsys, "widerface-predict", "--weights", WEIGHTS, "--images", images,
                       "--out", tmp_path / "pred_resized", "--target-size", "400", "--max-size", "700")
    assert code == 0, err
    assert (tmp_path / "pred_resized" / "1--Handshaking" / "1_Handshaking_2.txt").exists()


@pytest.mark.parametrize("argv, message", [
    (["detect", "nowhere.jpg", "--weights", WEIGHTS], "no such image or folder: nowhere.jpg"),
    (["detect", CROWD, "--weights", "missing.pth"], "checkpoint not found: missing.pth"),
    (["detect", CROWD, "--weights", WEIGHTS, "--backbone", "resnet50"], "resnet50"),
    (["eval", "--pred", "nowhere", "--gt", "nowhere"], "prediction folder not found"),
    (["widerface-predict", "--weights", WEIGHTS, "--images", "nowhere", "--out", "x"], "image folder not found"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_image_and_empty_folder(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00" * 10)
    code, _, err = run(capsys, "detect", broken, "--weights", WEIGHTS)
    assert code == 2 and "cannot decode image file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "detect", empty, "--weights", WEIGHTS)
    assert code == 2 and "no images" in err
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "eval", "--pred", str(tmp_path / "x"), "--gt", str(tmp_path)])


def test_bench_reports_each_stage(capsys):
    code, out, err = run(capsys, "bench", CROWD, "--weights", WEIGHTS, "--runs", "2")
    assert code == 0, err
    assert "1024x624" in out
    for stage in ("detect (all)", "forward", "postprocess"):
        assert stage in out and "median" in out


@pytest.mark.parametrize("command", [[], ["detect"], ["widerface-predict"], ["eval"], ["bench"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: retinaface" in capsys.readouterr().out


def test_the_installed_command_runs():
    script = pathlib.Path(sys.executable).parent / "retinaface"  # the console script pip installed
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "retinaface_ext.cli"]
    result = subprocess.run(argv + ["eval", "--pred", "nowhere", "--gt", "nowhere"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("retinaface eval: error: prediction folder not found")
