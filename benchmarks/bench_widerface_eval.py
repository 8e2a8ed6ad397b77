"""WIDER FACE val evaluation speed: the whole val set (3,226 images, all three settings)
with constructed predictions of about 150 faces per image, from memory and from the
prediction folder (parsing 3,226 files included); and, on 50 images, against a
transcription of the widely used port (tests/widerface_port.py).

    pytest --benchmark benchmarks/bench_widerface_eval.py
"""

import pathlib

import numpy as np
import pytest
import widerface_port

from retinaface_ext.evaluation import widerface

GT_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "widerface_gt"
pytestmark = pytest.mark.skipif(not GT_DIR.exists(), reason="../shared/widerface_gt missing")


def constructed_predictions(ground_truth, per_image=150, seed=0):
    """Jittered ground-truth boxes plus random false positives, ``per_image`` rows per
    image (at least the faces), sorted by decreasing score."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for image in ground_truth.images:
        boxes = image.boxes.copy()
        boxes[:, :2] += rng.normal(0, 0.1, (len(boxes), 2)) * np.maximum(boxes[:, 2:], 1)
        extra = max(0, per_image - len(boxes))
        fp = np.column_stack([rng.uniform(0, 1000, (extra, 2)), rng.uniform(4, 100, (extra, 2))])
        boxes = np.concatenate([boxes, fp])
        scores = np.concatenate([rng.uniform(0.3, 1, len(image.boxes)), rng.uniform(0, 0.6, extra)])
        order = np.argsort(-scores, kind="stable")
        predictions[image.name] = np.column_stack([boxes, scores])[order]
    return predictions


@pytest.fixture(scope="module")
def ground_truth():
    return widerface.load_ground_truth(GT_DIR)


@pytest.fixture(scope="module")
def predictions(ground_truth):
    return constructed_predictions(ground_truth)


@pytest.fixture(scope="module")
def prediction_dir(tmp_path_factory, ground_truth, predictions):
    folder = tmp_path_factory.mktemp("widerface_pred")
    for image in ground_truth.images:
        widerface.write_prediction_file(folder / image.event / f"{image.name}.txt", image.name, predictions[image.name])
    return folder


@pytest.mark.parametrize("source", ["memory", "folder"])
def bench_full_val_set(benchmark, ground_truth, predictions, prediction_dir, source):
    benchmark.group = "widerface eval: full val set, 3226 images, ~150 predictions each"
    if source == "memory":
        fn = lambda: widerface.evaluate(predictions, ground_truth)  # noqa: E731
    else:
        fn = lambda: widerface.evaluate(prediction_dir, GT_DIR)  # noqa: E731
    result = benchmark(fn)
    assert all(0 < ap <= 1 for ap in result.ap.values())


@pytest.mark.parametrize("impl", ["ours", "port"])
def bench_fifty_images(benchmark, ground_truth, predictions, impl):
    benchmark.group = "widerface eval: 50 images (<= 50 faces), ~150 predictions each"
    small = [image for image in ground_truth.images if len(image.boxes) <= 50]
    subset = widerface.GroundTruth(small[:: len(small) // 50][:50])
    subset_predictions = {image.name: predictions[image.name] for image in subset.images}
    if impl == "ours":
        fn = lambda: widerface.evaluate(subset_predictions, subset).ap  # noqa: E731
    else:
        fn = lambda: widerface_port.evaluation(subset_predictions, subset)  # noqa: E731
    aps = benchmark.pedantic(fn, rounds=1 if impl == "port" else 10, iterations=1)
    assert 0 < aps["hard"] <= 1
