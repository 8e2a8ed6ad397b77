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
from cli_run import one_line_error

from retinaface_ext import cli

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
EXPECTED = SHARED / "expected" / "widerface_crowd.mobilenet0.25.json"
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def run(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's way out (a bad command line)
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expected_faces(threshold):
    rows = json.loads(EXPECTED.read_text())["detections"]
    return sum(row[4] >= threshold for row in rows)


def test_detect_writes_annotated_images_and_json(tmp_path, capsys):
    code, out, err = run(capsys, "detect", CROWD, "--weights", WEIGHTS, "--out", tmp_path, "--json")
    assert code == 0, err
    record = json.loads((tmp_path / "widerface_crowd.jpg.json").read_text())
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "nowhere.jpg", "--weights", WEIGHTS], "no such image or folder: nowhere.jpg"),
        (["detect", CROWD, "--weights", "missing.pth"], "--weights missing.pth: no such checkpoint file"),
        (["detect", CROWD, "--weights", WEIGHTS, "--backbone", "resnet50"], "resnet50"),
        (["eval", "--pred", "nowhere", "--gt", "nowhere"], "prediction folder not found"),
        (["widerface-predict", "--weights", WEIGHTS, "--images", "nowhere", "--out", "x"], "image folder not found"),
    ],
)
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
    code, out, err = run(capsys, "bench", CROWD, "--weights", WEIGHTS, "--runs", "2", "--batch-size", "2")
    assert code == 0, err
    assert "1024x624" in out
    for stage in ("detect (all)", "forward", "postprocess", "detect x2"):
        assert stage in out and "median" in out
    assert out.count("images/s") == 2


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


def image_folder(tmp_path, names):
    """A folder with a small crop of the crowd photo under each of ``names`` (relative paths)."""
    crop = cv2.imread(str(CROWD))[:200, :300]
    folder = tmp_path / "w"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / name), crop)
    return folder


def test_detect_never_writes_over_its_inputs(tmp_path, capsys):
    folder = image_folder(tmp_path, ["a.jpg"])
    before = (folder / "a.jpg").read_bytes()
    code, _, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--out", folder)
    one_line_error(code, err, "would overwrite it")
    assert (folder / "a.jpg").read_bytes() == before
    code, _, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--out", folder, "--no-draw", "--json")
    assert code == 0, err  # only a.jpg.json is written next to it
    assert (folder / "a.jpg").read_bytes() == before and (folder / "a.jpg.json").exists()


def test_detect_gives_every_input_its_own_outputs(tmp_path, capsys):
    folder = image_folder(tmp_path, ["a.jpg", "a.png", "x/1.jpg", "y/1.jpg"])
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "detect", folder, "--weights", WEIGHTS, "--out", out, "--json", "--recursive", "--threshold", "0.3"
    )
    assert code == 0, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "a.jpg",
        "a.jpg.json",
        "a.png",
        "a.png.json",
        "x/1.jpg",
        "x/1.jpg.json",
        "y/1.jpg",
        "y/1.jpg.json",
    ]
    assert json.loads((out / "y" / "1.jpg.json").read_text())["image"].endswith(os.path.join("y", "1.jpg"))
    assert cv2.imread(str(out / "a.png")).shape == (200, 300, 3)


def test_detect_refuses_an_out_that_is_a_file_or_under_one(tmp_path, capsys):
    folder = image_folder(tmp_path, ["a.jpg"])
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    code, _, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--out", blocker)
    one_line_error(code, err, "is a file, not a folder")
    code, _, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--out", blocker / "sub", "--json")
    one_line_error(code, err, "lies under", "a file, not a folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("extra", [[], ["--json", "--no-draw"]])
def test_a_failed_write_is_an_error_not_a_success(tmp_path, capsys, extra):
    folder = image_folder(tmp_path, ["a.jpg"])
    out = tmp_path / "out"
    (out / "a.jpg").mkdir(parents=True)  # the output path is taken by a folder: writing it fails
    (out / "a.jpg.json").mkdir()
    code, outp, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--out", out, *extra)
    one_line_error(code, err, "a.jpg")
    assert "faces" not in outp


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--target-size", "0"], "--target-size: expected a number > 0"),
        (["--max-size", "-5"], "--max-size: expected a number > 0"),
        (["--target-size", "nan"], "--target-size: expected a finite number"),
        (["--confidence", "-0.1"], "--confidence: expected a number in [0, 1]"),
        (["--confidence", "nan"], "--confidence: expected a finite number"),
        (["--nms", "1.5"], "--nms: expected a number in [0, 1]"),
        (["--threshold", "nan"], "--threshold: expected a finite number"),
        (["--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
        (["--origin-size", "--max-size", "500"], "--origin-size and --max-size contradict"),
        (["--device", "gpu"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_detect_option_values_are_validated(capsys, argv, fragment):
    code, _, err = run(capsys, "detect", CROWD, "--weights", WEIGHTS, *argv)
    one_line_error(code, err, fragment)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible")
def test_cuda_on_a_machine_without_one(capsys):
    code, _, err = run(capsys, "detect", CROWD, "--weights", WEIGHTS, "--device", "cuda")
    one_line_error(code, err, "device 'cuda': CUDA is not available here")


def test_batch_size_batches_and_gives_the_same_faces(tmp_path, capsys):
    folder = image_folder(tmp_path, ["a.jpg", "b.jpg", "c.png"])
    cv2.imwrite(str(folder / "b.jpg"), cv2.imread(str(CROWD))[300:, 400:])
    code, one_by_one, err = run(capsys, "detect", folder, "--weights", WEIGHTS, "--json", "--threshold", "0.3")
    assert code == 0, err
    from retinaface_ext import Detector

    calls = []
    original = Detector.detect
    try:
        Detector.detect = lambda self, images, *a, **k: calls.append(len(images)) or original(self, images, *a, **k)
        code, together, err = run(
            capsys, "detect", folder, "--weights", WEIGHTS, "--json", "--threshold", "0.3", "--batch-size", "2"
        )
    finally:
        Detector.detect = original
    assert code == 0, err
    assert calls == [2, 1]
    for a, b in zip(one_by_one.splitlines(), together.splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["image"] == b["image"] and len(a["faces"]) == len(b["faces"])
        np.testing.assert_allclose([f["box"] for f in a["faces"]], [f["box"] for f in b["faces"]], atol=1e-2)


def test_errors_about_an_image_name_its_file(tmp_path, capsys):
    """Weights that overflow (finite, but 1e30 times too large) make the network's
    outputs infinite: the error names the file, not images[0]."""
    import torch

    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    key = next(k for k in state if k.endswith("stage1.0.0.weight"))
    state[key] = state[key] * 1e30
    torch.save(state, tmp_path / "overflowing.pth")
    shutil.copyfile(CROWD, tmp_path / "crowd.jpg")
    code, _, err = run(
        capsys, "detect", tmp_path / "crowd.jpg", "--weights", tmp_path / "overflowing.pth", "--device", "cpu"
    )
    assert code == 2 and f"{tmp_path / 'crowd.jpg'}: the network's" in err and "images[" not in err, err
