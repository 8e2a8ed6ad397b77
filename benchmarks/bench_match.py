"""Prior matching and detection decoding: our kernels vs the batched references vs the
seed's per-image loop. One table per shape; ratios inside a table are side by side.

    pytest --benchmark benchmarks/bench_match.py
"""

import pytest
import torch
from seed_reference import seed_batch

from retinaface_ext import ops
from retinaface_ext.ops import reference
from retinaface_ext.priors import prior_boxes


def training_batch(batch, faces, seed=0):
    """Padded targets like a WIDER FACE batch at 640x640: faces of 4 to 200 px."""
    g = torch.Generator().manual_seed(seed)
    side = (4 + torch.rand(batch, faces, 1, generator=g) ** 2 * 196) / 640
    side = side * torch.cat([torch.ones(batch, faces, 1), 1.1 + 0.2 * torch.rand(batch, faces, 1, generator=g)], -1)
    corner = torch.rand(batch, faces, 2, generator=g) * (1 - side)
    truths = torch.cat([corner, corner + side], -1)
    landmarks = corner.repeat(1, 1, 5) + torch.rand(batch, faces, 10, generator=g) * side.repeat(1, 1, 5)
    labels = torch.where(torch.rand(batch, faces, generator=g) < 0.75, 1, -1)
    return truths, labels, landmarks, torch.full((batch,), faces)


@pytest.mark.parametrize("impl", ["kernel", "batched_reference", "seed_loop"])
@pytest.mark.parametrize("faces", [30, 200])
def bench_match(benchmark, synchronized, device, faces, impl):
    priors = prior_boxes((640, 640), device=device)
    truths, labels, landmarks, num_truths = (t.to(device) for t in training_batch(32, faces))
    benchmark.group = f"match {device} B=32 G={faces} 640x640 ({len(priors)} priors)"
    if impl == "kernel":
        fn = lambda: ops.match(truths, labels, landmarks, num_truths, priors)  # noqa: E731
    elif impl == "batched_reference":
        fn = lambda: reference.match(truths, labels, landmarks, num_truths, priors)  # noqa: E731
    else:
        if device == "cuda":
            pytest.skip("the seed's loop matches on the CPU")
        fn = lambda: seed_batch(truths, labels, landmarks, num_truths, priors)  # noqa: E731
    benchmark(synchronized(fn, device))


def detection_outputs(image_size, device, seed=0):
    """Network outputs for one image where about 1% of the priors look like faces."""
    priors = prior_boxes(image_size, device=device)
    g = torch.Generator().manual_seed(seed)
    P = len(priors)
    face_logit = torch.randn(1, P, generator=g) * 1.5 - 8
    face_logit[torch.rand(1, P, generator=g) < 0.01] += 10
    conf = torch.softmax(torch.stack([torch.zeros_like(face_logit), face_logit], -1), -1)
    loc, landm = torch.randn(1, P, 4, generator=g) * 0.5, torch.randn(1, P, 10, generator=g)
    return [t.to(device) for t in (loc, conf, landm)] + [priors]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("image_size", [(640, 640), (1080, 1920), (1600, 2150)])
def bench_decode_detections(benchmark, synchronized, device, image_size, impl):
    loc, conf, landm, priors = detection_outputs(image_size, device)
    benchmark.group = f"decode_detections {device} {image_size[1]}x{image_size[0]} ({len(priors)} priors)"
    decode = ops.decode_detections if impl == "kernel" else reference.decode_detections
    kept = benchmark(synchronized(lambda: decode(loc, conf, landm, priors, (0.1, 0.2), 0.02), device))
    benchmark.extra_info["candidates"] = len(kept[0])
