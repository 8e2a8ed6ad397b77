"""`retinaface synthetic` and `retinaface check-data`."""

import pytest
from cli_run import run_cli as run

from retinaface_ext import cli


def test_synthetic_then_check_data(tmp_path, capsys):
    out = tmp_path / "faces"
    code, stdout, _ = run(capsys, "synthetic", out, "--train", 4, "--val", 2, "--image-size", 96, "--seed", 1)
    assert code == 0 and str(out / "train" / "label.txt") in stdout and str(out / "val" / "label.txt") in stdout
    code, stdout, _ = run(capsys, "check-data", out / "train" / "label.txt")
    assert code == 0 and "retinaface format, 4 images" in stdout and "every image is in" in stdout
    (out / "train" / "images" / "000002.jpg").unlink()
    code, stdout, err = run(capsys, "check-data", out / "train" / "label.txt")
    assert code == 2 and "1 of the 4 images are missing" in err
    assert f"missing: {out / 'train' / 'images' / '000002.jpg'}" in stdout
    code, _, err = run(capsys, "synthetic", out, "--train", 5)
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synthetic", "x", "--train", "0"], "--train: expected a whole number >= 1"),
        (["synthetic", "x", "--val", "-2"], "--val: expected a whole number >= 0"),
        (["synthetic", "x", "--image-size", "16"], "image_size must be at least 32"),
        (["check-data", "no/such/label.txt"], "No such file"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_check_data_reports_a_malformed_line(tmp_path, capsys):
    labels = tmp_path / "label.txt"
    labels.write_text("# a.jpg\n1 2 3\n")
    code, _, err = run(capsys, "check-data", labels)
    assert code == 2 and f"{labels}:2: expected 20 numbers" in err


@pytest.mark.parametrize("command", ["synthetic", "check-data"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: retinaface" in capsys.readouterr().out
