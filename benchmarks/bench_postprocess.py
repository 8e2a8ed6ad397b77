"""The Detector's pre- and post-processing kernels against their references and the
ways they replaced, on the shared crowd photo (published MobileNet-0.25 checkpoint).

- ``detect_faces``: the op vs ``ops.reference.detect_faces`` vs ``staged``, the earlier
  post-processing (decode_detections and batched_nms with a dozen torch ops between them).
- ``image_planes``: the op vs the reference vs OpenCV (split, then one subtraction per
  plane: the onnxruntime engine's earlier pre-processing) vs torch's parallel ``sub``.

These loops run warm; ``bench_detect.py`` shows them in place, right after a forward pass.

    pytest --benchmark benchmarks/bench_postprocess.py
"""

import pathlib

import cv2
import numpy as np
import pytest
import torch

from retinaface_ext import RetinaFace, ops
from retinaface_ext.ops import reference
from retinaface_ext.priors import prior_boxes

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
MEAN = (104.0, 117.0, 123.0)
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


@pytest.fixture(scope="module")
def crowd_outputs():
    image = cv2.imread(str(CROWD))
    model = RetinaFace.from_checkpoint(WEIGHTS).eval()
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - torch.tensor(MEAN)[:, None, None])[None]
    with torch.inference_mode():
        return model(x), image.shape[:2]


def staged(loc, logits, landm, priors, canvas, top_k=5000):
    """The earlier Detector post-processing of one image (no padding, no resizing)."""
    height, width = canvas
    face = torch.sigmoid(logits[..., 1] - logits[..., 0])
    conf = torch.stack([1 - face, face], dim=-1)
    boxes, scores, points, image_index, _ = ops.decode_detections(loc, conf, landm, priors, (0.1, 0.2), 0.02)
    if not bool(torch.isfinite(face.sum() + boxes.sum() + points.sum())):
        raise ValueError("not finite")
    boxes = boxes * boxes.new_tensor([width, height] * 2)
    points = points * points.new_tensor([width, height] * 5)
    keep = ops.batched_nms(boxes, scores, image_index, 0.4)
    keep = keep[torch.argsort(image_index[keep], stable=True)]
    counts = (
        torch.zeros(loc.shape[0], dtype=torch.long, device=loc.device)
        .index_add_(0, image_index[keep], torch.ones_like(keep))
        .tolist()
    )
    return [(boxes[i[:750]], scores[i[:750]], points[i[:750]]) for i in torch.split(keep, counts)]


@pytest.mark.parametrize("impl", ["kernel", "reference", "staged"])
@pytest.mark.parametrize("batch", [1, 4])
def bench_detect_faces(benchmark, synchronized, device, crowd_outputs, batch, impl):
    (loc, logits, landm), canvas = crowd_outputs
    loc, logits, landm = (t.repeat(batch, 1, 1).to(device) for t in (loc, logits, landm))
    priors = prior_boxes(canvas, device=device)
    benchmark.group = f"detect_faces {device} crowd 1024x624 batch {batch} ({len(priors)} priors)"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    if impl == "kernel":
        fn = lambda: ops.detect_faces(loc, logits, landm, priors, canvas)  # noqa: E731
    elif impl == "reference":
        fn = lambda: reference.detect_faces(loc, logits, landm, priors, canvas)  # noqa: E731
    else:
        fn = lambda: staged(loc, logits, landm, priors, canvas)  # noqa: E731
    with torch.inference_mode():
        assert benchmark(synchronized(fn, device)) is not None


@pytest.mark.parametrize("impl", ["kernel", "reference", "opencv", "torch_sub"])
@pytest.mark.parametrize("size", [(1024, 624), (640, 480)], ids=["1024x624", "640x480"])
def bench_image_planes(benchmark, synchronized, device, size, impl):
    image = cv2.resize(cv2.imread(str(CROWD)), size, interpolation=cv2.INTER_LINEAR)
    pixels = torch.from_numpy(image).to(device)
    benchmark.group = f"image_planes {device} uint8 {size[0]}x{size[1]}x3"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    if impl == "kernel":
        fn = lambda: ops.image_planes(pixels, MEAN)  # noqa: E731
    elif impl == "reference":
        fn = lambda: reference.image_planes(pixels, MEAN)  # noqa: E731
    elif impl == "torch_sub":
        mean = torch.tensor(MEAN, device=device)[:, None, None]
        fn = lambda: torch.sub(pixels.permute(2, 0, 1), mean)  # noqa: E731
    elif device != "cpu":
        pytest.skip("OpenCV runs on the CPU")
    else:

        def fn():
            planes = np.empty((3, *image.shape[:2]), np.float32)
            for channel, plane in enumerate(cv2.split(image)):
                cv2.subtract(plane, MEAN[channel], dst=planes[channel], dtype=cv2.CV_32F)
            return planes

    assert benchmark(synchronized(fn, device)) is not None


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def bench_box_vote(benchmark, synchronized, device, crowd_outputs, impl):
    """Box voting of the crowd photo's detections pooled with a second pass of them
    jittered by up to 2 px (as two pyramid levels give them): the op vs its reference."""
    (loc, logits, landm), canvas = crowd_outputs
    boxes, scores, landmarks, _ = ops.detect_faces(loc, logits, landm, prior_boxes(canvas), canvas)
    g = torch.Generator().manual_seed(0)
    pooled = [
        torch.cat([t, t + (torch.rand(t.shape, generator=g) * 4 - 2) * (t.dim() > 1)]) for t in (boxes, landmarks)
    ]
    boxes, landmarks, scores = pooled[0].to(device), pooled[1].to(device), torch.cat([scores, scores]).to(device)
    idxs = torch.zeros(len(boxes), dtype=torch.long, device=device)
    benchmark.group = f"box_vote {device}: the crowd photo's {len(boxes)} detections (two passes pooled)"
    if impl == "kernel":
        run = lambda: ops.box_vote(boxes, scores, landmarks, 0.4, idxs)  # noqa: E731
    else:
        run = lambda: reference.box_vote(boxes, scores, landmarks, idxs, 0.4)  # noqa: E731
    benchmark.pedantic(
        synchronized(run, device), rounds=5 if impl == "reference" else 50, iterations=1, warmup_rounds=1
    )
