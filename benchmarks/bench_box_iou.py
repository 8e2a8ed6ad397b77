"""Pairwise IoU: our kernel vs the broadcast reference vs torchvision's box_iou (which has
no batched form). One table per shape.

    pytest --benchmark benchmarks/bench_box_iou.py
"""

import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference
from retinaface_ext.priors import prior_boxes

try:
    import torchvision
except ImportError:  # optional peer
    torchvision = None

# (name, batch or None, boxes per image): faces against the priors of a 640x640 image
# (16,800), as matching compares them; and two sets of random boxes.
SHAPES = [
    ("50 faces x 16800 priors", None, 50),
    ("batch 8 x 50 faces x 16800 priors", 8, 50),
    ("2000 x 2000 sparse boxes", None, 2000),
]


def make(name, batch, count, device):
    g = torch.Generator().manual_seed(0)
    leading = (batch,) if batch else ()
    corner = torch.rand(*leading, count, 2, generator=g) * 0.9
    first = torch.cat([corner, corner + 0.02 + torch.rand(*leading, count, 2, generator=g) * 0.1], -1)
    if "priors" in name:
        second = reference.point_form(prior_boxes((640, 640)))
        second = second.expand(batch, -1, -1).contiguous() if batch else second
    else:
        corner = torch.rand(count, 2, generator=g) * 0.9
        second = torch.cat([corner, corner + 0.02 + torch.rand(count, 2, generator=g) * 0.1], -1)
    return first.to(device), second.to(device)


@pytest.mark.parametrize("impl", ["kernel", "reference", "torchvision"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0].replace(" ", "_") for s in SHAPES])
def bench_box_iou(benchmark, synchronized, device, shape, impl):
    name, batch, count = shape
    if impl == "torchvision" and (torchvision is None or batch):
        pytest.skip("torchvision is not installed" if torchvision is None else "torchvision's box_iou is not batched")
    boxes1, boxes2 = make(name, batch, count, device)
    benchmark.group = f"box_iou {device} {name}"
    fn = {
        "kernel": ops.box_iou,
        "reference": reference.box_iou,
        "torchvision": getattr(torchvision, "ops", None) and torchvision.ops.box_iou,
    }[impl]
    iou = benchmark(synchronized(lambda: fn(boxes1, boxes2), device))
    assert iou.shape[-2:] == (count, boxes2.shape[-2])
