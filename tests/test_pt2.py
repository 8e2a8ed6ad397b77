"""AOTInductor packages (.pt2): the whole detector as one compiled graph with our ops
inside, the network alone for Detector(engine="aoti"), the C++ example, and exports that
fail leaving nothing behind.

CI compiles one package (the detector, made by the `retinaface export --pt2` command); the
network packages of MobileNet-0.25 (plain and DCN) and of a ResNet-50 are compiled by the
tests marked slow (``pytest --slow tests/test_pt2.py``)."""

import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch
from cli_run import one_line_error, run_cli
from shared_data import HAVE_SHARED, WEIGHTS, assert_reproduces_the_pipeline
from test_pt2_files import PLANTED, fake_package

from retinaface_ext.export import DETECTION_OUTPUTS, DetectionGraph, load_pt2, to_pt2
from retinaface_ext.inference import Detections
from retinaface_ext.models import InferenceRetinaFace, RetinaFace

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")
SIZES = [(64, 96), (333, 451), (480, 640)]  # any size from 33 up, not only multiples of 32


def bgr_batch(crowd, batch, height, width):
    """``batch`` different crops of the crowd photo as [B, 3, H, W] float32 BGR in 0..255."""
    crops = [crowd[7 * b : 7 * b + height, 11 * b : 11 * b + width] for b in range(batch)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().contiguous()


@pytest.fixture(scope="module")
def detector_package(tmp_path_factory):
    """The detector package of the published MobileNet-0.25, written by the command."""
    import contextlib
    import io

    from retinaface_ext import cli

    path = tmp_path_factory.mktemp("pt2") / "detector.pt2"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", "--weights", str(WEIGHTS), "--pt2", str(path), "--postprocess"])
    assert code == 0, err.getvalue()
    printed = out.getvalue()
    assert "network + post-processing for cpu" in printed and "outputs: boxes, scores, landmarks, counts" in printed
    return path


def test_the_detector_package_gives_the_expected_faces(detector_package, crowd):
    package, metadata = load_pt2(detector_package)
    assert metadata["retinaface_ext.postprocess"] == "1" and metadata["retinaface_ext.backbone"] == "mobilenet0.25"
    images = torch.from_numpy(crowd).permute(2, 0, 1)[None].float().contiguous()
    boxes, scores, landmarks, counts = package(images)
    assert counts.tolist() == [len(boxes)]
    assert_reproduces_the_pipeline(Detections(boxes, scores, landmarks.reshape(-1, 5, 2), crowd.shape[:2]))


@pytest.mark.parametrize("batch", [1, 3])
def test_the_detector_package_equals_eager_at_any_size(detector_package, crowd, batch):
    package, _ = load_pt2(detector_package)
    eager = DetectionGraph(
        InferenceRetinaFace(RetinaFace.from_checkpoint(WEIGHTS), channels_last=False, fuse_activations=False)
    ).eval()
    for height, width in SIZES:
        images = bgr_batch(crowd, batch, height, width)
        with torch.no_grad():
            expected, got = eager(images), package(images)
        assert torch.equal(expected[3], got[3]), (height, width)
        for name, a, b in zip(DETECTION_OUTPUTS[:3], expected, got):
            assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(a.abs().max())), (name, height, width)


def cxx_tools():
    return shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))


@pytest.mark.skipif(not cxx_tools(), reason="no C++ compiler or CMake")
def test_the_cpp_example_builds_and_prints_the_faces(detector_package, crowd, tmp_path):
    import retinaface_ext

    build = build_example(tmp_path / "build")
    raw = tmp_path / "crowd.bgr"
    raw.write_bytes(np.ascontiguousarray(crowd).tobytes())
    library = retinaface_ext._extension.library_path()
    height, width = crowd.shape[:2]
    run = [build, library, detector_package, raw, "--raw", height, width, "--threshold", 0.6]
    result = subprocess.run([str(c) for c in run], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    python = Detections(*_package_faces(detector_package, crowd), crowd.shape[:2]).above(0.6)
    assert lines[-1] == f"{len(python)} faces (score >= 0.60)" and len(python) >= 20
    for line, box, score in zip(lines, python.boxes, python.scores):
        values = line.split()
        assert float(values[3]) == pytest.approx(float(score), abs=1e-4)
        assert [float(v) for v in values[5:9]] == pytest.approx(box.tolist(), abs=0.06)
    for arguments, message in (
        ([detector_package, raw], "retinaface_detect: error"),
        ([detector_package, raw, "--raw", "99999999999999999999", "1"], "--raw HEIGHT: expected a whole number"),
        ([detector_package, raw, "--raw", height, "-5"], "--raw WIDTH: expected a whole number"),
        ([detector_package, raw, "--threshold", "nan"], "--threshold: expected a number in [0, 1]"),
    ):
        bad = subprocess.run([str(c) for c in [build, library, *arguments]], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    # The metadata is read as data before the package loads: a network package (or one
    # from elsewhere) is refused and its library's code never runs.
    marker = tmp_path / "the-constructor-ran"
    if shutil.which("cc"):
        (tmp_path / "planted.c").write_text(PLANTED)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", tmp_path / "planted.so", tmp_path / "planted.c"], check=True)
        planted = fake_package(tmp_path / "network.pt2", (tmp_path / "planted.so").read_bytes())
        run = [build, library, planted, raw, "--raw", height, width]
        environment = {**os.environ, "RETINAFACE_TEST_MARKER": str(marker)}
        bad = subprocess.run([str(c) for c in run], capture_output=True, text=True, env=environment)
        assert bad.returncode == 2 and "not a package with post-processing" in bad.stderr and not marker.exists()


def build_example(build):
    """examples/cpp configured and built against this torch; the program's path."""
    source = os.path.join(os.path.dirname(__file__), "..", "examples", "cpp")
    torch_root = os.path.dirname(torch.__file__)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    configure = ["cmake", "-S", source, "-B", build, f"-DTORCH_ROOT={torch_root}", f"-DTORCH_CXX11_ABI={abi}"]
    for command in (configure + ["-DCMAKE_BUILD_TYPE=Release"], ["cmake", "--build", build, "-j", "2"]):
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build / "retinaface_detect"


def _package_faces(path, crowd):
    package, _ = load_pt2(path)
    boxes, scores, landmarks, _ = package(torch.from_numpy(crowd).permute(2, 0, 1)[None].float().contiguous())
    return boxes, scores, landmarks.reshape(-1, 5, 2)


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    model = RetinaFace("mobilenet0.25")

    def compile_fails(program, package_path=None, inductor_configs=None):
        with open(package_path, "wb") as partial:
            partial.write(b"half a package")
        raise RuntimeError("the C++ compiler ran out of memory\nmore lines")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_fails)
    with pytest.raises(RuntimeError, match="^to_pt2: AOTInductor failed: the C\\+\\+ compiler ran out of memory$"):
        to_pt2(model, tmp_path / "out.pt2", size=(64, 64))
    assert list(tmp_path.iterdir()) == []

    def export_fails(*args, **kwargs):
        raise torch._dynamo.exc.UserError(None, "Constraints violated (height)!\n...")

    monkeypatch.setattr(torch.export, "export", export_fails)
    with pytest.raises(RuntimeError, match="^to_pt2: torch.export failed: Constraints violated"):
        to_pt2(model, tmp_path / "out.pt2", size=(64, 64))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(tmp_path, capsys):
    model = RetinaFace("mobilenet0.25")
    for kwargs, message in (
        (dict(device="tpu"), "device must be one of cpu, cuda"),
        (dict(size=(20, 64)), "at least 32 x 32"),
        (dict(size=(32, 64)), "at least 33 x 33"),
        (dict(batch=0), "batch must be a whole number"),
    ):
        with pytest.raises(ValueError, match=message):
            to_pt2(model, tmp_path / "x.pt2", **kwargs)
    with pytest.raises(ValueError, match="fuses activations into oneDNN calls.*pass the RetinaFace"):
        to_pt2(InferenceRetinaFace(model), tmp_path / "x.pt2")  # as to_onnx (export/common.py)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a visible CUDA device"):
            to_pt2(model, tmp_path / "x.pt2", device="cuda")
    code, _, err = run_cli(capsys, "export", "--weights", WEIGHTS)
    one_line_error(code, err, "give one of --onnx OUT and --pt2 OUT")
    code, _, err = run_cli(capsys, "export", "--weights", WEIGHTS, "--pt2", tmp_path / "a.pt2", "--opset", "18")
    one_line_error(code, err, "--opset and --exporter apply to --onnx")
    assert list(tmp_path.iterdir()) == []
    not_a_package = tmp_path / "x.pt2"
    not_a_package.write_bytes(b"PK")
    with pytest.raises(ValueError, match="not a loadable AOTInductor package"):
        load_pt2(not_a_package)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mobilenet0.25", "mobilenet0.25 dcn", "random resnet50"])
def test_network_packages_equal_eager_within_1e4(kind, crowd, tmp_path):
    torch.manual_seed(0)
    if kind == "mobilenet0.25":
        model = RetinaFace.from_checkpoint(WEIGHTS)
    elif kind == "mobilenet0.25 dcn":
        model = RetinaFace.from_checkpoint(WEIGHTS, dcn=True)
        with torch.no_grad():  # offsets and masks that are not the identity
            for name, p in model.named_parameters():
                if "conv_offset" in name:
                    p.normal_(0, 0.01)
    else:
        model = RetinaFace("resnet50").eval()
    report = to_pt2(model, tmp_path / "network.pt2", postprocess=False)
    assert report.dcn == ("dcn" in kind) and max(report.differences.values()) < 1e-3
    package, metadata = load_pt2(tmp_path / "network.pt2")
    assert metadata["retinaface_ext.postprocess"] == "0"
    eager = InferenceRetinaFace(model, channels_last=False, fuse_activations=False).eval()
    for batch in (1, 2):
        for height, width in SIZES:
            images = bgr_batch(crowd, batch, height, width) - torch.tensor([104.0, 117.0, 123.0]).reshape(1, 3, 1, 1)
            with torch.no_grad():
                for a, b in zip(eager(images), package(images)):
                    assert a.shape == b.shape
                    assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(a.abs().max())), (kind, batch, height)


@pytest.mark.slow
def test_the_aoti_engine_equals_the_torch_engine(crowd, tmp_path, monkeypatch):
    from retinaface_ext import Detector

    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    aoti = Detector(WEIGHTS, engine="aoti", device="cpu", batch_size=4)
    torch_engine = Detector(WEIGHTS, device="cpu", batch_size=4)
    images = [crowd, crowd[:300, :500], cv2.resize(crowd, (400, 240))]
    for a, b in zip(aoti.detect(images), torch_engine.detect(images)):
        assert len(a) == len(b)
        assert float((a.boxes - b.boxes).abs().max()) < 0.05 and float((a.scores - b.scores).abs().max()) < 1e-4
    cached = list((tmp_path / "cache" / "pt2").glob("*.pt2"))  # beside its digest and the built/ record
    assert len(cached) == 1 and cached[0].name.endswith("-cpu.pt2")
    again = Detector(str(cached[0]), device="cpu")  # the .pt2 file selects the engine
    assert again.engine.name == "aoti" and len(again.detect(crowd)) == len(aoti.detect(crowd))
    levels = dict(scales=(0.8, 1.3), flip=True, merge="vote")  # levels of other sizes, passes of their own
    merged = Detector(str(cached[0]), device="cpu", **levels).detect(images)
    for a, b in zip(merged, Detector(WEIGHTS, device="cpu", **levels).detect(images)):
        assert len(a) == len(b) and float((a.boxes - b.boxes).abs().max()) < 0.05
    with pytest.raises(ValueError, match="at least 33 x 33"):
        aoti.detect(crowd[:20, :20])


@pytest.mark.cuda
@pytest.mark.timeout(230)  # a CUDA compile and a C++ build: more than run-checks' 150 s per test
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_a_cuda_package_equals_eager_and_runs_in_the_cpp_example(crowd, tmp_path):
    """The detector compiled for CUDA: its detections equal the eager module's on CUDA at
    two sizes, and the C++ example (where CMake is found) prints them with --cuda."""
    path = tmp_path / "detector-cuda.pt2"
    report = to_pt2(WEIGHTS, path, device="cuda", postprocess=True)
    assert report.device == "cuda"
    package, _ = load_pt2(path)
    eager = (
        DetectionGraph(
            InferenceRetinaFace(RetinaFace.from_checkpoint(WEIGHTS), channels_last=False, fuse_activations=False)
        )
        .cuda()
        .eval()
    )
    for height, width in SIZES[1:]:
        images = bgr_batch(crowd, 2, height, width).cuda()
        with torch.no_grad():
            expected, got = eager(images), package(images)
        assert got[0].is_cuda and torch.equal(expected[3], got[3])
        for a, b in zip(expected[:3], got[:3]):
            assert float((a - b).abs().max()) <= 1e-3 * max(1.0, float(a.abs().max()))
    if not cxx_tools():
        return
    binary = build_example(tmp_path / "build")
    raw = tmp_path / "crowd.bgr"
    raw.write_bytes(np.ascontiguousarray(crowd).tobytes())
    import retinaface_ext

    height, width = crowd.shape[:2]
    run = [binary, retinaface_ext._extension.library_path(), path, raw, "--raw", height, width, "--cuda"]
    result = subprocess.run([str(c) for c in run], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and int(result.stdout.splitlines()[-1].split()[0]) >= 20, result.stderr


def test_the_trust_of_a_package_is_the_installation_that_built_it(detector_package, crowd, tmp_path, monkeypatch):
    from retinaface_ext.export import UntrustedPackage

    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))  # where no package was built
    with pytest.raises(UntrustedPackage):
        load_pt2(detector_package)
    package, _ = load_pt2(detector_package, trust=True)
    images = torch.from_numpy(crowd).permute(2, 0, 1)[None].float().contiguous()
    assert int(package(images)[3][0]) > 20
