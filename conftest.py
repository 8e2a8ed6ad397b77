"""Shared pytest set-up for tests/ and benchmarks/.

``pytest`` runs the tests and runs each benchmark once, untimed, as a smoke test;
``pytest --benchmark`` runs only the benchmarks, timed, and prints the comparison tables.
Tests import the *installed* retinaface_ext (pytest runs with --import-mode=importlib,
so this folder is not put on sys.path).
"""

import math
import os

import pytest
import torch
from device_guard import DeviceGuard

import retinaface_ext

#: Timing of the CUDA rows: a warm-up, then 0.1 s of rounds (at least 5). A GPU op's median
#: settles within a few hundred rounds, and ``pytest --benchmark -k cuda`` then takes about
#: three minutes rather than one second per row. ``--benchmark-max-time`` or
#: ``--benchmark-warmup`` on the command line win; benchmarks with their own rounds
#: (``benchmark.pedantic``) keep them.
CUDA_BENCHMARK = dict(max_time=0.1, warmup=True, warmup_iterations=10)


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        help="run only the benchmarks, timed, and print kernel vs reference vs peer tables",
    )
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow (minutes of compiling each; CI leaves them out)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("--benchmark"):
        config.option.benchmark_only = True
        config.option.benchmark_disable = False
    else:
        config.option.benchmark_disable = True
    if not retinaface_ext.kernels_available():
        try:
            retinaface_ext._extension.require()
        except ImportError as error:
            raise pytest.UsageError(f"the tests need the compiled kernels: {error}") from None


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow") and not os.environ.get("RETINAFACE_EXT_SLOW"):
        skip = pytest.mark.skip(reason="slow: run with --slow (or RETINAFACE_EXT_SLOW=1)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    if not config.getoption("--benchmark"):
        return
    options = dict(CUDA_BENCHMARK)
    if float(config.getoption("benchmark_max_time")) != 1.0:  # given on the command line
        del options["max_time"]
    if config.getoption("benchmark_warmup"):
        del options["warmup"], options["warmup_iterations"]
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda" and options:
            item.add_marker(pytest.mark.benchmark(**options))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """With RETINAFACE_EXT_BENCHMARK_ROWS=file, each timed row is appended to the file as it
    finishes (group, name, median ms, rounds): a run cut short by a deadline keeps its rows."""
    yield
    path = os.environ.get("RETINAFACE_EXT_BENCHMARK_ROWS")
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(getattr(fixture, "stats", None), "stats", None)
    if path and stats is not None and stats.rounds:
        with open(path, "a") as rows:
            rows.write(f"{fixture.group}\t{item.name}\t{stats.median * 1e3:.4f} ms\t{stats.rounds} rounds\n")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """Throughput of the benchmarks that say how many images a call detects
    (``benchmark.extra_info["images"]``), from their median."""
    session = getattr(config, "_benchmarksession", None)
    rows = [bench for bench in getattr(session, "benchmarks", []) if "images" in bench.extra_info]
    if rows:
        terminalreporter.section("throughput: images per second (images per call / median)")
        for bench in rows:
            rate = bench.extra_info["images"] / bench.stats.median
            terminalreporter.write_line(f"{bench.name:70s} {rate:10,.1f} images/s")


@pytest.fixture(
    params=[
        pytest.param("cpu"),
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
            ],
        ),
    ]
)
def device(request):
    """Runs a test on the CPU, and on CUDA where a GPU is visible. On the CPU the test runs
    under tests/device_guard.py, which fails it where it leaves a tensor on the host
    beside the device's tensors, as CUDA would."""
    if request.param == "cuda":
        if "cuda" not in retinaface_ext.compiled_backends():
            pytest.fail("a GPU is visible but retinaface_ext was built without CUDA")
        yield request.param
        return
    with DeviceGuard() as guard:
        yield guard.device


def make_boxes(kind, n, seed=0, dtype=torch.float32, device="cpu"):
    """Boxes [n, 4] x1y1x2y2 and scores [n] for tests and benchmarks.

    kind "sparse": random in a 1000x1000 image, sides 4 to 100 px.
    kind "crowd": like a detector's raw candidates, jittered around ~25 faces.
    kind "column": one column of boxes that all overlap in x and mostly not in y (almost
    all are kept): the worst case of a sweep along x.
    kind "wide": "sparse" plus one box as wide as the image, which stretches every
    x-window of a sweep over the whole image.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "sparse":
        corner = torch.rand(n, 2, generator=g) * 1000
        size = torch.rand(n, 2, generator=g) * 96 + 4
        boxes = torch.cat([corner, corner + size], 1)
    elif kind == "crowd":
        faces = max(1, min(25, math.ceil(n / 40)))
        centres = torch.rand(faces, 2, generator=g) * 900 + 50
        sides = torch.rand(faces, generator=g) * 80 + 20
        face = torch.randint(0, faces, (n,), generator=g)
        side = sides[face][:, None] * (1 + 0.1 * torch.randn(n, 2, generator=g))
        centre = centres[face] + 0.1 * sides[face][:, None] * torch.randn(n, 2, generator=g)
        boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    elif kind == "column":
        y = torch.arange(n, dtype=torch.float32) * 8 + torch.rand(n, generator=g) * 4
        x = torch.rand(n, generator=g) * 4
        boxes = torch.stack([x, y, x + 20, y + 10], 1)
    elif kind == "wide":
        corner = torch.rand(n, 2, generator=g) * 1000
        boxes = torch.cat([corner, corner + 4 + torch.rand(n, 2, generator=g) * 30], 1)
        boxes[0] = torch.tensor([0.0, 0.0, 1000.0, 30.0])
    else:
        raise ValueError(f"unknown kind {kind!r}")
    scores = torch.rand(n, generator=g)
    return boxes.to(device=device, dtype=dtype), scores.to(device=device, dtype=dtype)


@pytest.fixture
def boxes_factory():
    return make_boxes


def _synchronized(fn, device):
    """fn, followed by a CUDA synchronisation when device is "cuda" (for timing)."""
    if device != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


@pytest.fixture
def synchronized():
    return _synchronized
