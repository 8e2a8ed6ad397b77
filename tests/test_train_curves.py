"""A training run draws its curves: results.png beside log.jsonl after each validation (the
losses, learning rate, images per second and AP by epoch), TensorBoard events with
--tensorboard, a note once without matplotlib; and asks for no more loader workers than
can work."""

import logging
import os
import sys

import pytest
from test_train import tiny

from retinaface_ext.train import Trainer
from retinaface_ext.train.curves import epoch_table


def test_a_run_draws_results_png_and_tensorboard_events(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tensorboard")
    trainer = Trainer(tiny(tmp_path, tensorboard=True), show_progress=False)
    trainer.fit()
    png = os.path.join(trainer.out, "results.png")
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 30_000  # six panels of curves, not an empty canvas
    table = epoch_table(os.path.join(trainer.out, "log.jsonl"))
    assert sorted(table["loss_c"]) == [1, 2] and sorted(table["ap50"]) == [1, 2]
    assert all(v > 0 for v in table["images_per_s"].values()) and table["lr"][2] > 0
    events = os.listdir(os.path.join(trainer.out, "tensorboard"))
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(os.path.join(trainer.out, "tensorboard"))
    board.Reload()
    assert {"train/loss_l", "train/lr", "val/ap50"} <= set(board.Tags()["scalars"])
    assert len(board.Scalars("train/loss_c")) == 12 and len(board.Scalars("val/ap50")) == 2


def test_a_resumed_run_counts_each_step_once_in_the_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [
        '{"event": "step", "epoch": 1, "step": 1, "loss_l": 4.0, "loss_c": 1, "loss_landm": 1, "lr": 0.1}',
        '{"event": "step", "epoch": 1, "step": 2, "loss_l": 9.0, "loss_c": 1, "loss_landm": 1, "lr": 0.1}',
        '{"event": "step", "epoch": 1, "step": 2, "loss_l": 2.0, "loss_c": 1, "loss_landm": 1, "lr": 0.1}',
        '{"event": "validation", "epoch": 1, "ap50": 0.5}',
        '{"event": "step", "epoch": 2, "st',  # a run killed while writing
    ]
    log.write_text("\n".join(lines))
    table = epoch_table(str(log))
    assert table["loss_l"] == {1: 3.0} and table["ap50"] == {1: 0.5}


def test_without_matplotlib_the_run_says_once_that_no_plot_is_drawn(tmp_path, monkeypatch, caplog):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    with caplog.at_level(logging.INFO, logger="retinaface_ext.train"):
        trainer = Trainer(tiny(tmp_path), show_progress=False)
        trainer.fit()
    notes = [r for r in caplog.records if "no results.png is drawn" in r.getMessage()]
    assert len(notes) == 1 and not os.path.exists(os.path.join(trainer.out, "results.png"))


def test_workers_are_lowered_to_what_can_work_with_a_note(tmp_path, caplog):
    """--workers 10000 forked thousands of processes."""
    with caplog.at_level(logging.WARNING, logger="retinaface_ext.train"):
        trainer = Trainer(tiny(tmp_path, workers=10_000), show_progress=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    batches = 24 // 4  # tiny(): 24 training images, batch 4
    assert 1 <= trainer.loader.num_workers <= min(cpus, batches)  # 10000 before
    assert any("--workers 10000 lowered to" in r.getMessage() for r in caplog.records)
    trainer.loader.close()
