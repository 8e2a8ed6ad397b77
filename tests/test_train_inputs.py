"""Training refuses what it cannot honour before its first step, in one line from the
command, and never writes over another run: the hostile inputs of the hardening pass."""

import json
import os
import re

import pytest
import torch
from cli_run import one_line_error, run_cli
from test_train import tiny

from retinaface_ext.data.synthetic import MANIFEST, make_synthetic_faces
from retinaface_ext.train import TrainConfig, Trainer
from retinaface_ext.train.state import FORMAT, load_checkpoint

GROUND_TRUTH_FILES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")


@pytest.fixture
def label_files(tmp_path):
    """A small face set in the label.txt layout: (train labels, val labels)."""
    made = make_synthetic_faces(tmp_path / "faces", num_train=8, num_val=2, image_size=96)
    return made.train_labels, made.val_labels


def on_labels(tmp_path, label_files, **overrides):
    train, val = label_files
    return tiny(tmp_path, data=train, val_data=val, epochs=1, **overrides)


def train_cli(capsys, tmp_path, *argv):
    return run_cli(
        capsys,
        "train",
        "--synthetic-train",
        8,
        "--synthetic-val",
        2,
        "--batch-size",
        4,
        "--image-size",
        64,
        "--workers",
        0,
        "--epochs",
        1,
        *argv,
    )


def test_resuming_another_run_into_a_run_folder_writes_nothing_there(tmp_path):
    """Once: runB's last.pt, best.pt and args.json overwritten, its log appended to."""
    Trainer(tiny(tmp_path, "runA", epochs=1), show_progress=False).fit()
    Trainer(tiny(tmp_path, "runB", epochs=1), show_progress=False).fit()
    before = {name: (tmp_path / "runB" / name).read_bytes() for name in os.listdir(tmp_path / "runB")}
    other = str(tmp_path / "runA" / "last.pt")
    with pytest.raises(FileExistsError, match="runB holds an earlier run"):
        Trainer(tiny(tmp_path, "runB", epochs=2, resume=other), show_progress=False)
    assert {name: (tmp_path / "runB" / name).read_bytes() for name in os.listdir(tmp_path / "runB")} == before
    Trainer(tiny(tmp_path, "runC", epochs=2, resume=other), show_progress=False).fit()  # a new folder: fine
    assert load_checkpoint(str(tmp_path / "runC" / "last.pt"))["epoch"] == 2
    Trainer(tiny(tmp_path, "runB", epochs=2, resume=other, exist_ok=True), show_progress=False)  # asked for


def test_missing_images_are_found_before_the_first_step(tmp_path, label_files):
    train, val = label_files
    os.remove(os.path.join(os.path.dirname(val), "images", "000001.jpg"))
    with pytest.raises(FileNotFoundError, match=r"--val-data .*val/label.txt: 1 of its 2 images are missing"):
        Trainer(on_labels(tmp_path, label_files), show_progress=False)
    os.remove(os.path.join(os.path.dirname(train), "images", "000003.jpg"))
    with pytest.raises(FileNotFoundError, match=r"--data .*train/label.txt: 1 of its 8 images are missing"):
        Trainer(on_labels(tmp_path, label_files), show_progress=False)


def test_widerface_settings_are_checked_before_the_first_step(tmp_path, label_files):
    train, _ = label_files
    folder = tmp_path / "WIDER_val" / "images"
    folder.mkdir(parents=True)
    (tmp_path / "gt").mkdir()
    with pytest.raises(ValueError, match="--widerface-val and --widerface-gt need validation data"):
        Trainer(
            tiny(tmp_path, data=train, widerface_val=str(folder), widerface_gt=str(tmp_path / "gt")),
            show_progress=False,
        )
    with pytest.raises(FileNotFoundError, match="--widerface-val .*nowhere: no such folder"):
        Trainer(
            on_labels(
                tmp_path, label_files, widerface_val=str(tmp_path / "nowhere"), widerface_gt=str(tmp_path / "gt")
            ),
            show_progress=False,
        )
    for name in GROUND_TRUTH_FILES:
        (tmp_path / "gt" / name).write_bytes(b"not a .mat file")
    with pytest.raises(ValueError, match="--widerface-gt .*gt: "):
        Trainer(
            on_labels(tmp_path, label_files, widerface_val=str(folder), widerface_gt=str(tmp_path / "gt")),
            show_progress=False,
        )


def test_the_epoch_is_saved_before_it_is_validated(tmp_path, monkeypatch):
    """A validation that fails (or is killed) keeps the epoch it validates; the resumed
    run validates it first."""
    trainer = Trainer(tiny(tmp_path, epochs=1), show_progress=False)

    def broken():
        raise OSError("the disk went away")

    monkeypatch.setattr(trainer, "validate", broken)
    with pytest.raises(OSError, match="the disk went away"):
        trainer.fit()
    saved = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert saved["epoch"] == 1 and saved["step"] == 6 and saved["validation_due"] is True
    monkeypatch.undo()
    resumed = Trainer(tiny(tmp_path, epochs=1, resume="auto"), show_progress=False)
    metrics = resumed.fit()
    assert "ap50" in metrics and (tmp_path / "run" / "best.pt").exists()
    assert "validation_due" not in load_checkpoint(str(tmp_path / "run" / "last.pt"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image-size", "32000000"], "--image-size must be at most 8192"),  # once: a petabyte allocated
        (["--batch-size", "1", "--image-size", "32"], "--batch-size 1 at --image-size 32 leaves BatchNorm"),
        (["--seed", str(10**30)], "--seed must be in [0, 2**64 - 1]"),
    ],
)
def test_sizes_and_seeds_that_cannot_run_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    code, _, err = train_cli(capsys, tmp_path, *argv)
    one_line_error(code, err, message)


def forged(tmp_path, name, change):
    checkpoint = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    change(checkpoint)
    path = tmp_path / f"{name}.pt"
    torch.save(checkpoint, path)
    return path


def test_forged_checkpoints_are_one_line_errors(tmp_path, capsys, monkeypatch):
    """Once up to 273 lines of traceback."""
    Trainer(tiny(tmp_path, epochs=1, dcn=False), show_progress=False).fit()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    torch.save({"format": FORMAT}, tmp_path / "bare.pt")
    cases = {
        tmp_path / "bare.pt": "'model' is missing",
        forged(tmp_path, "types", lambda c: c.update(epoch="1")): "'epoch' is str",
        forged(tmp_path, "args", lambda c: c["args"].pop("lr")): "args.lr missing",
        forged(tmp_path, "rng", lambda c: c["rng"].update(torch=torch.zeros(3))): "does not fit the run",
        forged(
            tmp_path, "shape", lambda c: c["model"].update({k: torch.zeros(3) for k in list(c["model"])[:1]})
        ): "does not fit the run",
        forged(tmp_path, "optimizer", lambda c: c["optimizer"].update(param_groups=[])): "does not fit the run",
    }
    for path, message in cases.items():
        code, _, err = run_cli(capsys, "train", "--resume", path, "--out", tmp_path / f"from-{path.stem}")
        one_line_error(code, err, str(path), message)


def test_a_bad_image_met_by_a_loader_worker_is_one_line(tmp_path, capsys, monkeypatch, label_files):
    """Once torch's 17 lines: "Caught ValueError in DataLoader worker process 0" and a traceback."""
    train, _ = label_files
    for image in os.listdir(os.path.join(os.path.dirname(train), "images")):
        (tmp_path / "faces" / "train" / "images" / image).write_bytes(b"not a JPEG")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        capsys, "train", "--data", train, "--batch-size", 4, "--image-size", 64, "--workers", 1, "--epochs", 1
    )
    one_line_error(code, err, "cannot decode image file", "faces/train/images/0000")


@pytest.mark.parametrize("content", ["{not json", "[]"])
def test_a_corrupt_synthetic_manifest_is_named(tmp_path, capsys, content):
    make_synthetic_faces(tmp_path / "set", num_train=2, num_val=0, image_size=64)
    (tmp_path / "set" / MANIFEST).write_text(content)
    code, _, err = run_cli(capsys, "synthetic", tmp_path / "set", "--train", 2, "--val", 0, "--image-size", 64)
    one_line_error(code, err, f"{tmp_path / 'set' / MANIFEST}: not a synthetic set's manifest", "delete")


def test_a_resumed_run_keeps_its_recipe(tmp_path):
    """Once: another --workers silently changed the losses (now the draws do not depend
    on it), and --lr was ignored while args.json recorded it."""
    Trainer(tiny(tmp_path, epochs=1, lr=0.02, workers=0), show_progress=False).fit()
    for change, message in [
        (dict(momentum=0.8), "the run used --momentum 0.9, this one says 0.8"),
        (dict(lr=0.05), "the run used --lr 0.02, this one says 0.05"),
        (dict(weights=str(tmp_path / "run" / "last.pt")), "--weights starts a run"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Trainer(tiny(tmp_path, epochs=2, resume="auto", **{"lr": 0.02, **change}), show_progress=False)
    # Not given again, the run's values apply (and are what args.json records).
    config = TrainConfig(out=str(tmp_path / "run"), resume="auto", synthetic_dir=str(tmp_path / "cache"))
    resumed = Trainer(config, show_progress=False)
    recorded = json.loads((tmp_path / "run" / "args.json").read_text())
    assert resumed.config.lr == recorded["lr"] == 0.02 and recorded["epochs"] == 1
    assert recorded["synthetic"]["num_train"] == 24 and recorded["image_size"] == 64
