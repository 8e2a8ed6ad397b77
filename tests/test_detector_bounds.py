"""What bounds the Detector's memory whatever it is asked: the network input pixels of one
forward pass (a batch runs as several passes under ``max_pass_pixels``), batch sizes that
are whole numbers, and ``bench`` refusing one pass it cannot make."""

import pytest
from cli_run import one_line_error, run_cli
from shared_data import CROWD, WEIGHTS

from retinaface_ext import Detector
from retinaface_ext.inference import padding_groups

pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def counting_passes(detector, monkeypatch):
    """The batch and canvas pixels of each forward pass the detector makes."""
    engine, passes = detector.engine, []

    class Counting:
        def __getattr__(self, name):
            return getattr(engine, name)

        def __call__(self, images, padding_mask=None):
            passes.append(images.shape[0] * images.shape[2] * images.shape[3])
            return engine(images, padding_mask)

    monkeypatch.setattr(detector, "engine", Counting())
    return passes


def test_a_batch_runs_as_passes_under_the_pixel_budget(crowd, monkeypatch):
    """bench --batch-size 400 was killed for memory: nothing bounded one pass."""
    images = [crowd[:300, :400], crowd[:320, :420], crowd[:240, :400], crowd[:300, :380], crowd[:200, :300]]
    budget = 2 * 320 * 420
    bounded = Detector(WEIGHTS, device="cpu", batch_size=8, max_pass_pixels=budget)
    passes = counting_passes(bounded, monkeypatch)
    found = bounded.detect(images)
    assert len(passes) >= 3 and max(passes) <= budget
    one_by_one = [Detector(WEIGHTS, device="cpu").detect(image) for image in images]
    for a, b in zip(found, one_by_one):
        assert len(a) == len(b) > 0 and float((a.boxes - b.boxes).abs().max()) < 1e-2


def test_padding_groups_keep_each_canvas_under_the_budget():
    sizes = [(100, 100)] * 10 + [(300, 50)]
    groups = padding_groups(sizes, max_images=8, max_pixels=30_000)
    assert sorted(i for g in groups for i in g) == list(range(11))
    for group in groups:
        height = max(sizes[i][0] for i in group)
        width = max(sizes[i][1] for i in group)
        assert len(group) == 1 or height * width * len(group) <= 30_000


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True, None])
def test_counts_are_whole_numbers(value):
    for name in ("batch_size", "max_pass_pixels"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            Detector(WEIGHTS, device="cpu", **{name: value})


def test_bench_refuses_one_pass_over_the_budget(capsys, monkeypatch):
    code, _, err = run_cli(capsys, "bench", CROWD, "--weights", WEIGHTS, "--batch-size", "400", "--runs", "1")
    one_line_error(code, err, "--batch-size 400: 400 images of 0.64M pixels", "max_pass_pixels", "at most 105")
