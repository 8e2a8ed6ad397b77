"""The Ray Data stage (retinaface_ext.ray) and `retinaface detect --ray --parquet`, on a local
Ray instance that the tests start (node address 127.0.0.1, no dashboard; Ray's servers
take every interface, behind its token authentication) and stop; each test under a deadline."""

import contextlib
import signal
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
from cli_run import one_line_error, run_cli
from shared_data import HAVE_SHARED, WEIGHTS

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")


@contextlib.contextmanager
def deadline(seconds: int):
    """TimeoutError in this (the main) thread after ``seconds``: no Ray test waits forever."""

    def stop(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def bounded():
    with deadline(300):
        yield


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from retinaface_ext.ray import start_local

    with deadline(120):
        start_local(num_cpus=2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def huge_png(width=9000, height=9000) -> bytes:
    """A PNG header declaring ``width x height`` pixels (over the Detector's 64M), no pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, crowd_photo):
    """A dozen images of different sizes (JPEG and PNG, one in a sub-folder), an unreadable
    file and an image over the pixel limit."""
    root = tmp_path_factory.mktemp("photos")
    (root / "more").mkdir()
    for i, (height, width) in enumerate([(624, 1024), (480, 640), (300, 500), (700, 420), (200, 320), (512, 512)]):
        image = cv2.resize(crowd_photo, (width, height))
        cv2.imwrite(str(root / f"a{i}.jpg"), image)
        cv2.imwrite(str(root / ("more" if i % 2 else ".") / f"b{i}.png"), np.ascontiguousarray(image[:, ::-1]))
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "huge.png").write_bytes(huge_png())
    return root


@pytest.fixture(scope="module")
def crowd_photo():
    from shared_data import CROWD

    return cv2.imread(str(CROWD))


def expected_faces(path, threshold=0.6):
    from retinaface_ext import Detector

    return Detector(WEIGHTS, device="cpu").detect(str(path)).above(threshold)


def assert_rows_are_the_detectors(rows, folder):
    """One row per file of ``folder``; the two bad files are error rows, the others the
    Detector's faces."""
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == 14
    by_name = {path.rsplit("/", 1)[-1]: row for path, row in zip(paths, rows)}
    assert by_name["broken.jpg"]["error"].startswith("cannot decode image") and by_name["broken.jpg"]["faces"] == 0
    assert "9000x9000 pixels is more than this detector takes" in by_name["huge.png"]["error"]
    for path in sorted(folder.rglob("*.*")):
        row = by_name[path.name]
        if path.name in ("broken.jpg", "huge.png"):
            assert row["width"] is None and row["boxes"] == []
            continue
        faces = expected_faces(path)
        assert row["error"] is None and row["faces"] == len(faces) > 0
        assert (row["height"], row["width"]) == cv2.imread(str(path)).shape[:2]
        torch.testing.assert_close(torch.tensor(row["boxes"]), faces.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(row["scores"]), faces.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(row["landmarks"]), faces.landmarks.reshape(-1, 10), atol=1e-3, rtol=0)


def test_the_stage_on_encoded_files_detects_each_image_once_and_errors_are_rows(ray_instance, folder):
    from retinaface_ext.ray import DetectFaces, schema

    dataset = ray_instance.data.read_binary_files(str(folder), include_paths=True)
    dataset = dataset.map_batches(
        DetectFaces,
        fn_constructor_kwargs=dict(weights=str(WEIGHTS), device="cpu", batch_size=4),
        batch_size=5,
        batch_format="pyarrow",
        compute=ray_instance.data.ActorPoolStrategy(size=1),
    )
    table = dataset.to_arrow_refs()
    rows = [row for ref in table for row in ray_instance.get(ref).to_pylist()]
    assert_rows_are_the_detectors(rows, folder)
    assert ray_instance.get(table[0]).schema.equals(schema())


def test_the_stage_decoding_ahead_as_on_a_gpu_gives_the_same_rows(folder, monkeypatch):
    """Called directly (no Ray): decoding in a thread ahead of the network, as with a GPU,
    changes nothing in the rows; a batch that is a dict of arrays is taken as Ray gives it."""
    from retinaface_ext.ray import DetectFaces

    files = sorted(folder.rglob("*.*"))
    batch = {
        "bytes": np.array([p.read_bytes() for p in files], dtype=object),
        "path": np.array([str(p) for p in files]),
    }
    stage = DetectFaces(str(WEIGHTS), device="cpu", batch_size=3, reuse_freed_memory=False)
    inline = stage(batch).to_pylist()
    monkeypatch.setattr(DetectFaces, "_decodes_ahead", lambda self: True)
    assert stage(batch).to_pylist() == inline
    assert_rows_are_the_detectors(inline, folder)


def test_the_stage_on_decoded_images_of_mixed_sizes(ray_instance, folder):
    """read_images decodes (RGB, with PIL) into a column of arrays of different sizes."""
    from PIL import Image

    from retinaface_ext import Detector
    from retinaface_ext.ray import DetectFaces

    files = sorted(str(p) for p in folder.rglob("*.*") if p.name not in ("broken.jpg", "huge.png"))
    dataset = ray_instance.data.read_images(files, include_paths=True, mode="RGB")
    rows = dataset.map_batches(
        DetectFaces,
        fn_constructor_kwargs=dict(weights=str(WEIGHTS), device="cpu", threshold=0.5),
        batch_size=6,
        compute=ray_instance.data.ActorPoolStrategy(size=1),
    ).take_all()
    assert sorted(row["path"] for row in rows) == files
    detector = Detector(WEIGHTS, device="cpu")
    for row in rows:
        faces = detector.detect(np.asarray(Image.open(row["path"]).convert("RGB")), color="rgb").above(0.5)
        assert row["faces"] == len(faces) > 0
        torch.testing.assert_close(torch.tensor(np.stack(row["boxes"])).float(), faces.boxes, atol=1e-3, rtol=0)


def read_results(folder):
    import pyarrow.parquet as pq

    tables = [pq.read_table(path) for path in sorted(folder.glob("*.parquet"))]
    return [row for table in tables for row in table.to_pylist()], tables


def test_the_command_writes_parquet_and_a_rerun_skips_everything(ray_instance, folder, tmp_path, capsys):
    from retinaface_ext.ray import schema

    out = tmp_path / "faces"
    command = ["detect", folder, "--recursive", "--ray", "--parquet", out, "--weights", WEIGHTS, "--device", "cpu"]
    code, _, err = run_cli(capsys, *command, "--batch-size", "4")
    assert code == 0, err
    assert f"{out}: 14 images written, 0 already there" in err
    rows, tables = read_results(out)
    assert_rows_are_the_detectors(rows, folder)
    assert all(table.schema.equals(schema(), check_metadata=True) for table in tables)
    assert [(field.name, str(field.type)) for field in schema()] == [
        ("path", "string"),
        ("width", "int32"),
        ("height", "int32"),
        ("faces", "int32"),
        ("boxes", "list<element: list<element: float>>"),
        ("scores", "list<element: float>"),
        ("landmarks", "list<element: list<element: float>>"),
        ("error", "string"),
    ]
    code, _, err = run_cli(capsys, *command)
    assert code == 0 and f"{out}: 0 images written, 14 already there" in err
    assert len(read_results(out)[0]) == 14


def test_a_run_stopped_midway_then_rerun_does_every_image_once(ray_instance, folder, tmp_path, capsys, monkeypatch):
    import retinaface_ext.ray as stage

    out = tmp_path / "faces"
    command = ["detect", folder, "--recursive", "--ray", "--parquet", out, "--weights", WEIGHTS, "--device", "cpu"]
    monkeypatch.setattr(stage, "ROWS_PER_PART", 3)
    monkeypatch.setattr(stage, "images_per_call", lambda batch_size: batch_size)
    written = []
    real_write_part = stage.write_part

    def write_then_die(*args):
        written.append(real_write_part(*args))
        if len(written) == 2:
            raise KeyboardInterrupt  # as Ctrl-C, right after a part file
        return written[-1]

    monkeypatch.setattr(stage, "write_part", write_then_die)
    code, _, _ = run_cli(capsys, *command, "--batch-size", "2")
    assert code != 0 and len(read_results(out)[0]) >= 6
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(stage, "write_part", real_write_part)
    code, _, err = run_cli(capsys, *command, "--actors", "2")  # as many actors as cores: reading goes on
    assert code == 0, err
    rows, _ = read_results(out)
    assert_rows_are_the_detectors(rows, folder)


def test_ray_options_are_checked_in_one_line(folder, tmp_path, capsys, monkeypatch):
    base = ["detect", folder, "--weights", WEIGHTS]
    for flags, message in (
        (["--parquet", tmp_path / "p"], "--parquet is written by a Ray run: add --ray"),
        (["--ray"], "--ray writes its rows as Parquet: add --parquet OUT_DIR"),
        (["--ray", "--parquet", tmp_path / "p", "--jsonl", tmp_path / "r.jsonl"], "--jsonl does not apply to a Ray"),
    ):
        code, _, err = run_cli(capsys, *base, *flags)
        one_line_error(code, err, message)
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), foreign / "data.parquet")
    code, _, err = run_cli(capsys, *base, "--ray", "--parquet", foreign)
    one_line_error(code, err, "data.parquet: not a results file of retinaface_ext")

    import retinaface_ext.ray as stage

    def no_ray():
        raise ImportError(f"Ray Data is not installed (No module named 'ray'): {stage.INSTALL_HINT}")

    monkeypatch.setattr(stage, "import_ray", no_ray)
    code, _, err = run_cli(capsys, *base, "--ray", "--parquet", tmp_path / "p")
    one_line_error(code, err, 'pip install "retinaface_ext[ray]"')


def test_the_package_does_not_import_ray():
    code = "import sys, retinaface_ext, retinaface_ext.cli, retinaface_ext.cli.detect; print('ray' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
