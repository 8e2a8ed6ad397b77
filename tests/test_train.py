"""Training: a short run learns, resumes exactly, survives interrupts and bad losses, and
never writes over an earlier run or a half checkpoint. Tiny images and few steps."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from cli_run import run_cli

from retinaface_ext import RetinaFace
from retinaface_ext.train import TrainConfig, Trainer, TrainingStopped
from retinaface_ext.train.options import SyntheticDefaults
from retinaface_ext.train.state import load_checkpoint, save_checkpoint


def tiny(tmp_path, name="run", **overrides):
    """A run on 24 synthetic images of 96 px, trained at 64 px, batch 4."""
    settings = dict(
        data="synthetic",
        synthetic_dir=str(tmp_path / "cache"),
        out=str(tmp_path / name),
        workers=0,
        epochs=2,
        batch_size=4,
        image_size=64,
        lr=0.01,
        warmup_epochs=0.5,
        dcn=True,
        synthetic=SyntheticDefaults(num_train=24, num_val=4, source_size=96),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def steps(out):
    with open(os.path.join(out, "log.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [r for r in records if r["event"] == "step"]


def losses(out):
    return [(r["step"], r["loss_l"], r["loss_c"], r["loss_landm"]) for r in steps(out)]


def test_a_short_run_writes_everything_and_its_checkpoint_loads_for_detection(tmp_path):
    trainer = Trainer(tiny(tmp_path), show_progress=False)
    metrics = trainer.fit()
    out = pathlib.Path(trainer.out)
    assert {"last.pt", "best.pt", "log.jsonl", "args.json", "val_detections.jpg"} <= set(os.listdir(out))
    assert len(steps(out)) == 12 and 0 <= metrics["ap50"] <= 1
    assert all(0 <= record["data_wait"] < 1 for record in steps(out))  # the share of time spent waiting for data
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 12 and checkpoint["dcn"] is True
    model = RetinaFace.from_checkpoint(out / "last.pt")  # the model part, as it is
    assert model.dcn
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trainer.model.state_dict()[key])
    assert json.loads((out / "args.json").read_text())["image_size"] == 64


def test_validation_runs_without_cudnns_autotuner_and_restores_it(tmp_path, monkeypatch):
    trainer = Trainer(tiny(tmp_path, epochs=1), show_progress=False)
    seen = []
    monkeypatch.setattr(Trainer, "_validate", lambda self: seen.append(torch.backends.cudnn.benchmark) or {"ap50": 0})
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert trainer.validate() == {"ap50": 0}
    assert seen == [False] and torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize("option", ["channels_last", pytest.param("compile", marks=pytest.mark.slow)])
def test_channels_last_and_compiled_training_follow_the_plain_run(tmp_path, option):
    """The same first two steps (losses within float tolerance) as a plain run (NCHW, not
    compiled). Channels-last is the default on the CPU."""
    assert (
        TrainConfig(device="cpu").resolved().channels_last and not TrainConfig(device="cuda").resolved().channels_last
    )
    plain = Trainer(tiny(tmp_path, "plain", epochs=1, val_every=5, channels_last=False), show_progress=False)
    plain.fit()
    other = Trainer(tiny(tmp_path, option, epochs=1, val_every=5, **{"channels_last": False, option: True}), False)
    other.fit()
    if option == "channels_last":
        assert other.model.body.stage1[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        # The plain run resumed in channels-last: its momentum buffers follow their parameters.
        resumed = Trainer(tiny(tmp_path, "plain", epochs=2, val_every=5, resume="auto", channels_last=True))
        buffers = [(p, resumed.optimizer.state[p]["momentum_buffer"]) for p in resumed.model.parameters()]
        assert any(p.dim() == 4 and not p.is_contiguous() for p, _ in buffers)
        assert all(buffer.stride() == p.stride() for p, buffer in buffers)
        # The saved groups' `fused` is not taken over: the run's own choice (not fused on the CPU).
        checkpoint = load_checkpoint(tmp_path / "plain" / "last.pt")
        for group in checkpoint["optimizer"]["param_groups"]:
            group["fused"] = True
        torch.save(checkpoint, tmp_path / "forged.pt")
        forged = Trainer(tiny(tmp_path, "forged-run", epochs=2, resume=str(tmp_path / "forged.pt")), False)
        assert [group["fused"] for group in forged.optimizer.param_groups] == [False]
    expected, got = losses(plain.out), losses(other.out)
    assert len(got) == len(expected) == 6
    for (step, *a), (_, *b) in zip(expected[:2], got[:2]):  # after that the tiny run is chaotic
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5), step


def test_resume_is_exact(tmp_path, monkeypatch):
    """Two epochs in one go equal one epoch, a stop (SIGTERM at the epoch's end), and a
    resumed second epoch (with loader workers this time): the same losses at every step
    and the same weights."""
    whole = Trainer(tiny(tmp_path, "whole"), show_progress=False)
    whole.fit()
    first = Trainer(tiny(tmp_path, "parts"), show_progress=False)
    save_epoch = first._save_epoch

    def save_then_stop(validated):
        save_epoch(validated)
        first._stop_requested = "SIGTERM"

    monkeypatch.setattr(first, "_save_epoch", save_then_stop)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM at step 6"):
        first.fit()
    resumed = Trainer(tiny(tmp_path, "parts", resume="auto", workers=2), show_progress=False)
    assert (resumed.epoch, resumed.step, resumed.step_in_epoch) == (1, 6, 0) and resumed.config.workers == 2
    resumed.fit()
    assert losses(whole.out) == losses(resumed.out) and len(losses(whole.out)) == 12
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    more = Trainer(tiny(tmp_path, "parts", epochs=3, resume="auto"), show_progress=False)
    assert more.epoch == 2
    more.fit()  # a longer run continues (with the schedule of its new length)
    assert load_checkpoint(os.path.join(more.out, "last.pt"))["epoch"] == 3


def test_an_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    whole = Trainer(tiny(tmp_path, "whole"), show_progress=False)
    whole.fit()
    interrupted = Trainer(tiny(tmp_path, "cut"), show_progress=False)
    original = interrupted._train_step
    calls = []

    def step_then_signal(batch):
        calls.append(1)
        if len(calls) == 8:  # in the second epoch
            interrupted._stop_requested = "SIGINT"
        return original(batch)

    monkeypatch.setattr(interrupted, "_train_step", step_then_signal)
    with pytest.raises(TrainingStopped, match="stopped by SIGINT at step 8") as stop:
        interrupted.fit()
    assert stop.value.exit_status == 130
    checkpoint = load_checkpoint(os.path.join(interrupted.out, "last.pt"))
    assert checkpoint["interrupted"] and checkpoint["epoch"] == 1 and checkpoint["step_in_epoch"] == 2
    Trainer(tiny(tmp_path, "cut", resume="auto"), show_progress=False).fit()
    assert losses(whole.out) == losses(interrupted.out)


@pytest.mark.parametrize("log_every", [1, 10])
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_part(tmp_path, monkeypatch, log_every):
    """Found where the losses are read back: the run saves the weights of the read before
    (step 2 when every step is read, step 0 with a window of 10) and names both steps."""
    trainer = Trainer(tiny(tmp_path, epochs=1, log_every=log_every), show_progress=False)
    original = trainer.criterion.sums
    calls = []

    def poisoned(*args):
        calls.append(1)
        sums = list(original(*args))
        if len(calls) == 3:
            sums[1] = sums[1] * float("nan")
        return tuple(sums)

    monkeypatch.setattr(trainer.criterion, "sums", poisoned)
    states = [{k: v.clone() for k, v in trainer.model.state_dict().items()}]
    original_step = trainer._train_step

    def remember(batch):
        losses = original_step(batch)
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return losses

    monkeypatch.setattr(trainer, "_train_step", remember)
    good = 2 if log_every == 1 else 0
    with pytest.raises(
        TrainingStopped, match=rf"step 3 \(epoch 1\): loss_c = nan; the weights of step {good} "
    ) as stop:
        trainer.fit()
    assert stop.value.exit_status == 1
    saved = load_checkpoint(os.path.join(trainer.out, "last.pt"))
    assert saved["step"] == good and saved["interrupted"]
    for key, value in states[good].items():
        torch.testing.assert_close(saved["model"][key], value, rtol=0, atol=0)
    assert [step for step, *_ in losses(trainer.out)] == [1, 2]  # the good steps were logged


def test_reading_the_losses_back_less_often_changes_no_number(tmp_path):
    """The same run with the losses read after every step and every 4 steps: the same
    losses in log.jsonl, step by step, and the same weights."""
    every = Trainer(tiny(tmp_path, "every", log_every=1), show_progress=False)
    every.fit()
    window = Trainer(tiny(tmp_path, "window", log_every=4), show_progress=False)
    window.fit()
    assert losses(every.out) == losses(window.out) and len(losses(every.out)) == 12
    for key, value in every.model.state_dict().items():
        torch.testing.assert_close(window.model.state_dict()[key], value, rtol=0, atol=0)


def test_the_training_priors_are_the_presets(tmp_path, monkeypatch):
    """A preset whose anchors differ from priors.py's defaults: the loss matches against
    the preset's priors."""
    import dataclasses

    from retinaface_ext.models import config
    from retinaface_ext.priors import prior_boxes

    small = dataclasses.replace(config.MOBILENET_025, min_sizes=((8, 24), (48, 96), (192, 384)))
    monkeypatch.setitem(config.PRESETS, "mobilenet0.25", small)
    trainer = Trainer(tiny(tmp_path, epochs=1), show_progress=False)
    expected = prior_boxes((64, 64), small.min_sizes, small.steps)
    assert not torch.equal(expected, prior_boxes((64, 64)))
    torch.testing.assert_close(trainer.priors, expected, rtol=0, atol=0)


def test_a_checkpoint_is_never_half_written(tmp_path):
    """The writer is killed between writing the new file and renaming it: the old
    checkpoint is still whole and loads."""
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), marker=1)
    script = textwrap.dedent(f"""
        import os, signal
        import retinaface_ext.files as files
        from retinaface_ext.train.state import save_checkpoint
        files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        save_checkpoint({str(path)!r}, marker=2)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path)
    assert result.returncode == -9
    assert load_checkpoint(str(path))["marker"] == 1


def test_an_earlier_run_is_never_overwritten(tmp_path):
    Trainer(tiny(tmp_path, epochs=1), show_progress=False).fit()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        Trainer(tiny(tmp_path, epochs=1), show_progress=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    Trainer(tiny(tmp_path, epochs=1, exist_ok=True), show_progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "vgg"], "invalid choice: 'vgg'"),
        (["--data", "no/such/label.txt"], "--data no/such/label.txt: no such label file"),
        (["--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
        (["--image-size", "100"], "--image-size must be a multiple of 32"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs CUDA"),
        (["--weights", "missing.pth"], "--weights missing.pth: no such file"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "out", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_minute_of_training_finds_faces_that_an_untrained_model_does_not(tmp_path):
    """DCN on the CPU: 160 synthetic images, 30 short epochs at 128 px. The loss falls
    clearly and the validation AP (not the loss) rises far above the untrained model's."""
    config = tiny(
        tmp_path,
        epochs=30,
        batch_size=16,
        image_size=128,
        lr=0.02,
        warmup_epochs=1,
        val_every=100,
        synthetic=SyntheticDefaults(num_train=160, num_val=20, source_size=192),
    )
    trainer = Trainer(config, show_progress=False)
    untrained = trainer.validate()["ap50"]
    trained = trainer.fit()["ap50"]
    records = steps(trainer.out)
    total = [2 * r["loss_l"] + r["loss_c"] + r["loss_landm"] for r in records]
    first, last = sum(total[:10]) / 10, sum(total[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert trained > 0.3 and trained > 10 * untrained, (untrained, trained)


def test_bf16_mixed_precision_on_the_cpu(tmp_path):
    trainer = Trainer(tiny(tmp_path, epochs=1, amp="bf16"), show_progress=False)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(r[1:])).all() for r in losses(trainer.out))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_the_command_trains_reports_the_ap_and_keeps_its_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(
        capsys,
        "train",
        "--synthetic-train",
        8,
        "--synthetic-val",
        2,
        "--epochs",
        1,
        "--batch-size",
        4,
        "--image-size",
        64,
        "--workers",
        0,
        "--dcn",
    )
    assert code == 0, err
    assert out.startswith("AP@0.5: 0.") or out.startswith("AP@0.5: 1.")
    run = tmp_path / "runs" / "train"
    assert {"last.pt", "best.pt", "log.jsonl", "val_detections.jpg"} <= set(os.listdir(run))
    code, _, err = run_cli(
        capsys,
        "train",
        "--synthetic-train",
        8,
        "--synthetic-val",
        2,
        "--epochs",
        1,
        "--batch-size",
        4,
        "--image-size",
        64,
        "--workers",
        0,
    )
    assert code == 2 and "holds an earlier run" in err


WEIGHTS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet0.25_Final.pth"


@pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights missing")
def test_training_with_dcn_starts_from_the_published_plain_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, epochs=1, weights=str(WEIGHTS), dcn=True), show_progress=False)
    plain = RetinaFace.from_checkpoint(WEIGHTS)
    assert trainer.model.dcn
    torch.testing.assert_close(trainer.model.ssh1.conv3X3[0].weight, 2 * plain.ssh1.conv3X3[0].weight)
    torch.testing.assert_close(trainer.model.body.stage1[0][0].weight, plain.body.stage1[0][0].weight)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_pretrained_backbones_load_in_their_published_layouts(tmp_path, backbone):
    from retinaface_ext.train.pretrained import load_pretrained_backbone

    source = RetinaFace(backbone).body.state_dict()
    if backbone == "mobilenet0.25":  # mobilenetV1X0.25_pretrain.tar: {"state_dict": {"module.stage1...": ...}}
        layout = {"state_dict": {f"module.{k}": v for k, v in source.items()}, "epoch": 250}
        layout["state_dict"].update({"module.fc.weight": torch.zeros(1000, 256), "module.fc.bias": torch.zeros(1000)})
    else:  # torchvision's resnet50 keys
        layout = dict(source, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(layout, tmp_path / "backbone.pth")
    model = RetinaFace(backbone)
    load_pretrained_backbone(model, tmp_path / "backbone.pth")
    for key, value in source.items():
        torch.testing.assert_close(model.body.state_dict()[key], value)
    torch.save({"stage1.0.0.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit the"):
        load_pretrained_backbone(model, tmp_path / "wrong.pth")


GROUND_TRUTH = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "widerface_gt"
CROWD = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "images" / "widerface_crowd.jpg"


@pytest.mark.skipif(not (GROUND_TRUTH.exists() and CROWD.exists()), reason="../shared missing")
def test_validation_reports_the_widerface_aps(tmp_path):
    """A WIDER_val/images folder with one image (named as a val image) and the official
    ground truth: the run reports easy, medium and hard APs beside AP@0.5."""
    import shutil

    from retinaface_ext.evaluation.widerface import load_ground_truth

    first = load_ground_truth(GROUND_TRUTH).images[0]
    folder = tmp_path / "WIDER_val" / "images" / first.event
    folder.mkdir(parents=True)
    shutil.copyfile(CROWD, folder / f"{first.name}.jpg")
    trainer = Trainer(
        tiny(tmp_path, epochs=1, widerface_val=str(tmp_path / "WIDER_val" / "images"), widerface_gt=str(GROUND_TRUTH)),
        show_progress=False,
    )
    metrics = trainer.fit()
    assert {"ap50", "easy", "medium", "hard"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("easy", "medium", "hard"))
    with open(os.path.join(trainer.out, "log.jsonl")) as handle:
        assert any('"easy"' in line for line in handle)
