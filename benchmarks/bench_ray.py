"""Images per second through the Ray Data stage (``retinaface detect DIR --ray --parquet``,
on a local Ray instance started once, outside the timing) against the plain folder run
(``retinaface detect DIR --jsonl``) on the same JPEG images of 640x480, one command per
round, both with ``--batch-size 8``: what the engine costs on one machine. A Ray run pays a
fixed start (its actor: a Python process importing torch and Ray Data, the Detector built;
about 3 s on 2 cores), so two folder sizes are timed (the smaller, quicker one in more
rounds), and the end prints the time per image once running (the slope between them) and
the fixed part of each; on a noisy machine a slope can leave a fixed part below zero.

    pytest --benchmark benchmarks/bench_ray.py -s
"""

import itertools
import os
import pathlib

import cv2
import numpy as np
import pytest

from retinaface_ext import cli

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
SIZES = (640, 2560)
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")
MEDIANS = {}  # (how, images): median seconds of a command


@pytest.fixture(scope="module", autouse=True)
def once_running():
    """After all rounds: each run's time per image once running (the slope between the two
    folder sizes) and its fixed part (what the slope leaves of the smaller folder's time)."""
    yield
    small, large = SIZES
    slopes = {}
    for how in ("jsonl", "ray"):
        if (how, small) in MEDIANS and (how, large) in MEDIANS:
            slope = (MEDIANS[how, large] - MEDIANS[how, small]) / (large - small)
            fixed = MEDIANS[how, small] - small * slope
            slopes[how] = slope
            print(f"\n{how}: {1000 * slope:.2f} ms per image once running, {fixed:.2f} s fixed")
    if len(slopes) == 2:
        print(f"ray / jsonl once running: {slopes['ray'] / slopes['jsonl']:.2f}x")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from retinaface_ext.ray import start_local

    start_local(num_cpus=os.cpu_count(), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder of each size in SIZES: the crowd photo shifted by 13 px more each time."""
    image = cv2.resize(cv2.imread(str(CROWD)), (640, 480))
    roots = {}
    for size in SIZES:
        roots[size] = tmp_path_factory.mktemp(f"images{size}")
        for i in range(size):
            shifted = np.ascontiguousarray(np.roll(image, 13 * i, axis=1))
            cv2.imwrite(str(roots[size] / f"{i:04d}.jpg"), shifted)
    return roots


@pytest.mark.parametrize("images", SIZES)
@pytest.mark.parametrize("how", ["jsonl", "ray"])
def bench_folder_run(benchmark, request, folders, tmp_path, how, images):
    if how == "ray":
        request.getfixturevalue("ray_instance")
    benchmark.group = f"detect a folder of {images} images of 640x480, cpu, one command per round"
    runs = itertools.count()

    def run():
        target = tmp_path / f"{how}{next(runs)}"
        output = ["--ray", "--parquet", target] if how == "ray" else ["--jsonl", f"{target}.jsonl"]
        argv = ["detect", folders[images], "--weights", WEIGHTS, "--device", "cpu", "--batch-size", "8", *output]
        assert cli.main([str(a) for a in argv]) == 0

    benchmark.pedantic(run, rounds=5 if images < 1000 else 3, warmup_rounds=1, iterations=1)
    if benchmark.stats:
        MEDIANS[how, images] = benchmark.stats.stats.median
        per_second = images / benchmark.stats.stats.median
        benchmark.extra_info["images_per_second"] = per_second
        print(f"\n{how}, {images} images: {per_second:.1f} images/s")
