"""NMS speed: our kernel vs the pure-PyTorch reference vs torchvision vs a numpy
greedy NMS like Pytorch_Retinaface's py_cpu_nms. One table per input set; read the
ratios inside a table (all measured side by side in one run).

    pytest --benchmark benchmarks/bench_nms.py
"""

import numpy as np
import pytest
import torch
from seed_reference import py_cpu_nms

from retinaface_ext import ops
from retinaface_ext.ops import reference

try:
    import torchvision
except ImportError:  # optional peer
    torchvision = None


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
    dets = np.hstack([boxes.cpu().numpy(), scores.cpu().numpy()[:, None]])
    return lambda: py_cpu_nms(dets, threshold)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("kind", ["sparse", "crowd", "column", "wide"])
def bench_nms(benchmark, boxes_factory, synchronized, device, kind, n, impl):
    boxes, scores = boxes_factory(kind, n, seed=0, device=device)
    benchmark.group = f"nms {device} {kind} N={n}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    fn = synchronized(run_nms(impl, boxes, scores, 0.4), device)
    if device == "cuda" and impl == "reference" and n >= 5000:  # a Python loop of launches: seconds a call
        kept = benchmark.pedantic(fn, rounds=2 if n == 5000 else 1, iterations=1)
    else:
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
    if device == "cuda" and impl == "reference":  # a Python loop of launches: seconds a call
        benchmark.pedantic(synchronized(fn, device), rounds=1, iterations=1)
    else:
        benchmark(synchronized(fn, device))
