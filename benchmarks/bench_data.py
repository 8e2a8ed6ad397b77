"""Training data: label parsing, loading throughput at 640x640 (our dataset + TrainTransform
vs the seed's WiderFaceDetection + a reference-equivalent preproc), synthetic generation,
and, for scale, what one CPU training step of MobileNet-0.25 consumes.

    pytest --benchmark benchmarks/bench_data.py

images/s are in each row's extra_info (``--benchmark-columns`` cannot show it; it is
printed at the end of the run) and equal images per round / the round's time.
"""

import os
import random

import cv2
import numpy as np
import pytest
import torch
from seed_reference import SeedWiderFaceDetection, seed_detection_collate

from retinaface_ext.data import TrainTransform, WiderFaceDataset, collate, make_loader, read_annotations
from retinaface_ext.data.synthetic import make_synthetic_faces

IMAGES = 96
BATCH = 8
SIZE = 640
FACE = (
    "449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.174 425.893 0.0 "
    "538.357 431.491 0.0 0.82"
)
NO_LANDMARKS = "78 221 7 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 0.2"
RATES = {}


@pytest.fixture(scope="module", autouse=True)
def report_rates():
    yield
    if RATES:
        print("\nimages/s (median round):")
        for name, rate in sorted(RATES.items()):
            print(f"  {name:60s} {rate:8.1f}")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic set at 640, and a label file of its images that have faces (the
    reference pipeline asserts on images without faces)."""
    made = make_synthetic_faces(
        tmp_path_factory.mktemp("bench_data") / "set", num_train=IMAGES + 8, num_val=1, seed=0, image_size=SIZE
    )
    annotations = read_annotations(made.train_labels)
    with open(made.train_labels) as handle:
        blocks = handle.read().split("# ")[1:]  # one block per image, in file order
    chosen = [block for index, block in enumerate(blocks) if len(annotations.faces(index))][:IMAGES]
    path = os.path.join(os.path.dirname(made.train_labels), "label_with_faces.txt")
    with open(path, "w") as handle:
        handle.write("".join("# " + block for block in chosen))
    return path


@pytest.fixture(scope="module")
def wider_sized_labels(tmp_path_factory):
    """A label file of WIDER FACE train's size: 12,880 images, about 160k faces."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12880):
        lines.append(f"# {i % 61}--Event/{i}.jpg")
        lines.extend(FACE if rng.random() < 0.6 else NO_LANDMARKS for _ in range(int(rng.integers(1, 24))))
    path = tmp_path_factory.mktemp("labels") / "label.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("impl", ["ours", "seed"])
def bench_parse_wider_train_labels(benchmark, wider_sized_labels, impl):
    benchmark.group = "parse a WIDER-train-sized label.txt (12,880 images, ~153k faces)"
    if impl == "ours":
        benchmark.pedantic(read_annotations, (wider_sized_labels,), rounds=5, iterations=1)
    else:
        benchmark.pedantic(SeedWiderFaceDetection, (wider_sized_labels, "."), rounds=3, iterations=1)


class ReferencePreproc:
    """Pytorch_Retinaface's preproc as data/data_augment.py does it (numpy + OpenCV per
    image, Python's random, float64 distortion, IoF crop test), written for this
    benchmark from its documented behaviour."""

    def __init__(self, img_dim, rgb_means):
        self.img_dim, self.rgb_means = img_dim, rgb_means

    def crop(self, image, boxes, labels, landm):
        height, width, _ = image.shape
        for _ in range(250):
            side = int(random.choice([0.3, 0.45, 0.6, 0.8, 1.0]) * min(width, height))
            left = 0 if width == side else random.randrange(width - side)
            top = 0 if height == side else random.randrange(height - side)
            roi = np.array((left, top, left + side, top + side))
            lt = np.maximum(boxes[:, None, :2], roi[None, :2])
            rb = np.minimum(boxes[:, None, 2:], roi[None, 2:])
            inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
            iof = inter / np.maximum(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)[:, None], 1)
            if not (iof >= 1).any():
                continue
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            keep = np.logical_and(roi[:2] < centres, centres < roi[2:]).all(axis=1)
            boxes_t, labels_t, landmarks_t = (
                boxes[keep].copy(),
                labels[keep].copy(),
                landm[keep].copy().reshape(-1, 5, 2),
            )
            if boxes_t.shape[0] == 0:
                continue
            image_t = image[roi[1] : roi[3], roi[0] : roi[2]]
            boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
            boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]
            landmarks_t = np.minimum(np.maximum(landmarks_t - roi[:2], 0), roi[2:] - roi[:2]).reshape(-1, 10)
            return image_t, boxes_t, labels_t, landmarks_t, False
        return image, boxes, labels, landm, True

    @staticmethod
    def convert(image, alpha=1.0, beta=0.0):
        values = image.astype(float) * alpha + beta
        values[values < 0] = 0
        values[values > 255] = 255
        image[:] = values

    def distort(self, image):
        image = image.copy()
        contrast_first = random.randrange(2)
        if random.randrange(2):
            self.convert(image, beta=random.uniform(-32, 32))
        if contrast_first and random.randrange(2):
            self.convert(image, alpha=random.uniform(0.5, 1.5))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if random.randrange(2):
            self.convert(image[:, :, 1], alpha=random.uniform(0.5, 1.5))
        if random.randrange(2):
            image[:, :, 0] = (image[:, :, 0].astype(int) + random.randint(-18, 18)) % 180
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
        if not contrast_first and random.randrange(2):
            self.convert(image, alpha=random.uniform(0.5, 1.5))
        return image

    def __call__(self, image, targets):
        boxes, labels, landm = targets[:, :4].copy(), targets[:, -1].copy(), targets[:, 4:-1].copy()
        image, boxes, labels, landm, pad = self.crop(image, boxes, labels, landm)
        image = self.distort(image)
        if pad:
            long_side = max(image.shape[:2])
            square = np.empty((long_side, long_side, 3), dtype=image.dtype)
            square[:, :] = self.rgb_means
            square[: image.shape[0], : image.shape[1]] = image
            image = square
        width = image.shape[1]
        if random.randrange(2):
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 0::2] = width - boxes[:, 2::-2]
            landm = landm.copy().reshape(-1, 5, 2)
            landm[:, :, 0] = width - landm[:, :, 0]
            landm = landm[:, [1, 0, 2, 4, 3]].reshape(-1, 10)
        height, width, _ = image.shape
        interpolation = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4][
            random.randrange(5)
        ]
        image = cv2.resize(image, (self.img_dim, self.img_dim), interpolation=interpolation).astype(np.float32)
        image -= self.rgb_means
        boxes[:, 0::2] /= width
        boxes[:, 1::2] /= height
        landm[:, 0::2] /= width
        landm[:, 1::2] /= height
        return image.transpose(2, 0, 1), np.hstack((boxes, landm, labels[:, None]))


def _loader(impl, labels, workers):
    if impl.startswith("ours"):
        transform = TrainTransform(image_size=SIZE, subtract_mean=impl == "ours")
        dataset = WiderFaceDataset(labels, transform=transform)
        return make_loader(dataset, batch_size=BATCH, num_workers=workers, seed=0, pin_memory=False)
    dataset = SeedWiderFaceDetection(
        labels, os.path.join(os.path.dirname(labels), "images"), ReferencePreproc(SIZE, (104, 117, 123))
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=seed_detection_collate
    )


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("impl", ["ours", "ours_uint8", "reference"])
def bench_loading(benchmark, synthetic, impl, workers):
    """ours_uint8: TrainTransform(subtract_mean=False), the mean subtracted per batch in
    the main process (where a GPU run would do it, on the device)."""
    benchmark.group = f"load + augment {IMAGES} synthetic images to {SIZE}x{SIZE}, batch {BATCH}, workers={workers}"
    loader = _loader(impl, synthetic, workers)

    def one_epoch():
        if impl == "ours_uint8":
            return sum(len(batch.normalized().images) for batch in loader)
        return sum(len(batch[0]) for batch in loader)

    benchmark.pedantic(one_epoch, rounds=5, iterations=1, warmup_rounds=1 if workers else 0)
    if benchmark.stats is not None:
        RATES[f"load {impl} workers={workers}"] = IMAGES / benchmark.stats.stats.median


@pytest.mark.parametrize("workers", [1, 2])
def bench_synthetic_generation(benchmark, tmp_path, workers):
    count = IMAGES
    benchmark.group = f"make_synthetic_faces: {count} images at {SIZE} (drawn, JPEG-encoded, written)"
    counter = iter(range(100))

    def generate():
        make_synthetic_faces(
            tmp_path / f"run{next(counter)}", num_train=count, num_val=0, seed=0, image_size=SIZE, workers=workers
        )

    benchmark.pedantic(generate, rounds=2, iterations=1)
    if benchmark.stats is not None:
        RATES[f"synthetic generation workers={workers}"] = count / benchmark.stats.stats.median


def bench_training_step_consumption(benchmark, synthetic):
    """One SGD step of MobileNet-0.25 with DCN at 640x640, batch 8 (forward, the seed's
    loss terms on ops.match targets, backward): the rate at which training eats images."""
    from retinaface_ext import RetinaFace, ops
    from retinaface_ext.priors import prior_boxes

    benchmark.group = f"training step MobileNet-0.25 + DCN, batch {BATCH}, {SIZE}x{SIZE}"
    model = RetinaFace("mobilenet0.25", dcn=True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = collate(
        [TrainTransform(image_size=SIZE, seed=i)(*item) for i, item in zip(range(BATCH), WiderFaceDataset(synthetic))]
    )
    priors = prior_boxes((SIZE, SIZE))

    def step():
        loc, conf, landm = model(batch.images)
        loc_t, conf_t, landm_t = ops.match(batch.truths, batch.labels, batch.landmarks, batch.num_truths, priors)
        positive = conf_t != 0
        loss = (
            torch.nn.functional.smooth_l1_loss(loc[positive], loc_t[positive])
            + torch.nn.functional.cross_entropy(conf.flatten(0, 1), positive.flatten().long())
            + torch.nn.functional.smooth_l1_loss(landm[conf_t > 0], landm_t[conf_t > 0])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        RATES["training step (consumption)"] = BATCH / benchmark.stats.stats.median
