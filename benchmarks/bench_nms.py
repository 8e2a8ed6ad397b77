"""NMS speed: our kernel vs the pure-PyTorch reference vs torchvision vs a numpy
greedy NMS like Pytorch_Retinaface's py_cpu_nms. One table per input set; read the
ratios inside a table (all measured side by side in one run).

    pytest --benchmark benchmarks/bench_nms.py
"""

import numpy as np
import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference

try:
    import torchvision
except ImportError:  # optional peer
    torchvision = None


def numpy_greedy_nms(boxes, scores, threshold):
    """Greedy NMS in numpy, the way Pytorch_Retinaface's py_cpu_nms works ("+1" areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


IMPLEMENTATIONS = ["kernel", "reference", "torchvision", "numpy_py_cpu_nms"]


def run_nms(impl, boxes, scores, threshold):
    if impl == "kernel":
        return lambda: ops.nms(boxes, scores, threshold)
    if impl == "reference":
        return lambda: reference.nms(boxes, scores, threshold)
    if impl == "torchvision":
        if torchvision is None:
            pytest.skip("torchvision is not installed")
        return lambda: torchvision.ops.nms(boxes, scores, threshold)
    if boxes.is_cuda:
        pytest.skip("numpy runs on the CPU only")
    boxes_np, scores_np = boxes.numpy(), scores.numpy()
    return lambda: numpy_greedy_nms(boxes_np, scores_np, threshold)



@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("kind", ["sparse", "crowd"])
def bench_nms(benchmark, boxes_factory, synchronized, device, kind, n, impl):
    boxes, scores = boxes_factory(kind, n, seed=0, device=device)
    benchmark.group = f"nms {device} {kind} N={n}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    fn = synchronized(run_nms(impl, boxes, scores, 0.4), device)
    kept = benchmark(fn)
    assert len(kept) > 0


@pytest.mark.parametrize("impl", ["kernel", "reference", "torchvision"])
def bench_batched_nms(benchmark, boxes_factory, synchronized, device, impl):
    boxes, scores = boxes_factory("crowd", 20000, seed=0, device=device)
    idxs = torch.randint(0, 20, (20000,), generator=torch.Generator().manual_seed(0)).to(device)
    benchmark.group = f"batched_nms {device} crowd N=20000, 20 classes"
    if impl == "kernel":
        fn = lambda: ops.batched_nms(boxes, scores, idxs, 0.4)  # noqa: E731
    elif impl == "reference":
        fn = lambda: reference.batched_nms(boxes, scores, idxs, 0.4)  # noqa: E731
    else:
        if torchvision is None:
            pytest.skip("torchvision is not installed")
        fn = lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.4)  # noqa: E731
    benchmark(synchronized(fn, device))
