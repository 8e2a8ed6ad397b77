"""The Detector's other ways to run: the onnxruntime engine, half precision on CUDA, and
torch.compile (whole graphs, no breaks at our ops)."""

import pathlib

import cv2
import numpy as np
import pytest
import torch
import torch._dynamo
from shared_data import CROWD, HAVE_SHARED, WEIGHTS, assert_reproduces_the_pipeline

import retinaface_ext.inference.onnx_network as onnx_engine
from retinaface_ext import Detector, RetinaFace, ops
from retinaface_ext.export import to_onnx
from retinaface_ext.models import InferenceRetinaFace
from retinaface_ext.ops import box_iou
from retinaface_ext.priors import prior_boxes

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def onnx_detector(cache):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETINAFACE_EXT_CACHE", str(cache))
        return Detector(WEIGHTS, engine="onnxruntime")


def assert_same_faces(a, b, min_iou=0.999, score_tolerance=1e-4):
    assert len(a) == len(b)
    assert float(box_iou(a.boxes, b.boxes).diagonal().min()) >= min_iou
    assert float((a.scores - b.scores).abs().max()) <= score_tolerance
    assert float((a.landmarks - b.landmarks).abs().max()) <= 0.05


def test_onnxruntime_reproduces_the_pipeline_as_the_torch_engine_does(onnx_detector, detector, crowd):
    ours = onnx_detector.detect(crowd)
    assert_reproduces_the_pipeline(ours)
    assert_same_faces(ours, detector.detect(crowd))


def test_onnxruntime_batches_resizes_and_reuses_its_export(onnx_detector, detector, crowd, cache, monkeypatch):
    images = [crowd, cv2.resize(crowd, (640, 480)), crowd, crowd[:300, :500]]
    for a, b in zip(onnx_detector.detect(images), detector.detect(images)):
        assert_same_faces(a, b)
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(cache))
    monkeypatch.setattr("retinaface_ext.export.to_onnx", lambda *a, **k: pytest.fail("exported again"))
    again = Detector(WEIGHTS, engine="onnxruntime", target_size=400)
    resized = detector.__class__(WEIGHTS, device="cpu", target_size=400)
    assert_same_faces(again.detect(crowd), resized.detect(crowd))


def test_onnxruntime_runs_levels_and_merges_as_the_torch_engine_does(onnx_detector, cache, crowd, monkeypatch):
    """Levels of several sizes (which onnxruntime runs as passes of their own), mirrored,
    voted: the merged faces agree with the torch engine's."""
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(cache))
    levels = dict(scales=(0.7, 1.3), flip=True, merge="vote")
    ours = Detector(WEIGHTS, engine="onnxruntime", **levels)
    torch_engine = Detector(WEIGHTS, device="cpu", **levels)
    images = [crowd, crowd[:400, :700]]
    for a, b in zip(ours.detect(images), torch_engine.detect(images)):
        assert int((a.scores > 0.5).sum()) > 10
        assert_same_faces(a, b)


def old_detection_graph(path):
    """A graph with the inputs and outputs of 0.1's detection graph (Identity nodes)."""
    from onnx import TensorProto, helper, save

    names = ("boxes", "scores", "landmarks", "image_index")
    nodes = [helper.make_node("Identity", ["images"], [name]) for name in names]
    graph = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_an_onnx_file_is_a_detector(tmp_path, detector, crowd):
    pytest.importorskip("onnxruntime")
    model = RetinaFace.from_checkpoint(WEIGHTS)
    to_onnx(model, tmp_path / "net.onnx", check=False)
    from_file = Detector(str(tmp_path / "net.onnx"))
    assert from_file.engine.name == "onnxruntime"
    assert_same_faces(from_file.detect(crowd), detector.detect(crowd))
    to_onnx(model, tmp_path / "detect.onnx", postprocess=True, check=False)
    with pytest.raises(ValueError, match=r"a detection graph .*, not a network.*without --postprocess"):
        Detector(str(tmp_path / "detect.onnx"))
    old = old_detection_graph(tmp_path / "old.onnx")  # landmarks [K, 5, 2] and image_index, as 0.1 wrote
    with pytest.raises(ValueError, match=r"a detection graph .*, not a network.*without --postprocess"):
        Detector(str(old))
    with pytest.raises(ValueError, match="an ONNX file runs with engine='onnxruntime'"):
        Detector(str(tmp_path / "net.onnx"), engine="torch")


def test_engine_errors_are_one_line_and_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of torch, onnxruntime"):
        Detector(WEIGHTS, engine="tensorrt")
    with pytest.raises(ValueError, match="half and compile apply to engine='torch'"):
        Detector(WEIGHTS, engine="onnxruntime", half=True)
    with pytest.raises(ValueError, match="half=True needs a CUDA device"):
        Detector(WEIGHTS, device="cpu", half=True)

    def missing():
        raise ImportError(
            "engine='onnxruntime' needs onnxruntime (No module named 'onnxruntime'): " + onnx_engine.INSTALL_HINT
        )

    monkeypatch.setattr(onnx_engine, "import_onnxruntime", missing)
    with pytest.raises(ImportError, match=r"pip install onnxruntime \(or pip install \"retinaface_ext\[onnx\]\"\)"):
        Detector(WEIGHTS, engine="onnxruntime")


def test_the_missing_onnxruntime_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match="needs onnxruntime .*: pip install onnxruntime"):
        onnx_engine.import_onnxruntime()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def test_half_precision_on_cuda_finds_the_same_faces(crowd, dcn):
    model = RetinaFace.from_checkpoint(WEIGHTS, dcn=dcn)
    full = Detector(model, device="cuda").detect(crowd)
    half = Detector(model, device="cuda", half=True).detect(crowd)
    assert half.boxes.dtype == torch.float32
    confident_full, confident_half = full.above(0.5), half.above(0.5)
    assert abs(len(confident_full) - len(confident_half)) <= 1
    iou = box_iou(confident_full.boxes, confident_half.boxes)
    assert float(iou.max(1).values.min()) >= 0.95


@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def test_the_network_compiles_to_one_graph(dcn):
    model = InferenceRetinaFace(RetinaFace("mobilenet0.25", dcn=dcn).eval())
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(
            torch.randn(1, 3, 96, 128).contiguous(memory_format=torch.channels_last)
        )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    if dcn:
        targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
        assert any(t.startswith("retinaface_ext.deform_conv2d") for t in targets)


def test_the_post_processing_compiles_without_breaks_at_our_ops(detector, crowd):
    x = detector.network_input(crowd)
    with (
        torch.inference_mode(),
        torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True),
    ):
        loc, logits, landm = detector.model(x)
        priors = prior_boxes(tuple(x.shape[-2:]))
        explained = torch._dynamo.explain(ops.detect_faces)(loc, logits, landm, priors, tuple(x.shape[-2:]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert any(t.startswith("retinaface_ext.detect_faces") for t in targets), targets


def test_a_compiled_detector_gives_the_eager_faces(detector, crowd):
    compiled = Detector(WEIGHTS, device="cpu", compile=True)
    assert_same_faces(compiled.detect(crowd), detector.detect(crowd), score_tolerance=1e-5)
    padded = [crowd, crowd[:500, :900]]  # a padded batch: the padding mask and per-image priors
    for a, b in zip(compiled.detect(padded), detector.detect(padded)):
        assert_same_faces(a, b, score_tolerance=1e-5)


def test_the_commands_take_the_engine(tmp_path, capsys, cache, monkeypatch):
    pytest.importorskip("onnxruntime")
    from cli_run import run_cli

    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(cache))
    counts = []
    for engine in ("torch", "onnxruntime"):
        code, out, _ = run_cli(capsys, "detect", CROWD, "--weights", WEIGHTS, "--engine", engine)
        assert code == 0
        counts.append(out)
    assert counts[0] == counts[1] and "faces" in counts[0]
    code, out, _ = run_cli(capsys, "bench", CROWD, "--weights", WEIGHTS, "--engine", "onnxruntime", "--runs", "2")
    assert code == 0 and "with onnxruntime on cpu" in out
    code, _, error = run_cli(
        capsys, "detect", CROWD, "--weights", WEIGHTS, "--engine", "onnxruntime", "--device", "cuda"
    )
    assert code == 2 and ("engine='onnxruntime' runs on the CPU" in error or "CUDA is not available" in error)


class OtherNetwork(torch.nn.Module):
    """Outputs named as ours, of other shapes: [B, H*W, loc_width], [B, H*W, 2], [B, H*W, 10]."""

    def __init__(self, loc_width):
        super().__init__()
        self.loc_width = loc_width

    def forward(self, images):
        rows = images.flatten(2).transpose(1, 2).repeat(1, 1, 4)  # [B, H*W, 12]
        return rows[..., : self.loc_width], rows[..., :2], rows[..., :10]


def other_onnx(path, loc_width):
    torch.onnx.export(
        OtherNetwork(loc_width),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["loc", "logits", "landmarks"],
    )
    return path


def test_an_onnx_file_with_our_names_and_other_shapes_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Once a traceback from the post-processing."""
    pytest.importorskip("onnxruntime")
    from cli_run import run_cli

    declared = other_onnx(tmp_path / "declared.onnx", loc_width=3)
    with pytest.raises(
        ValueError, match=r"declared.onnx: not an exported RetinaFace network: loc is .* \[1, 1024, 3\]"
    ):
        Detector(str(declared))
    image = torch.zeros(3, 32, 32)
    with monkeypatch.context() as patch:  # a graph that does not declare its shapes: found when it runs
        patch.setattr(onnx_engine.OnnxRuntimeNetwork, "_check_declared_shapes", lambda self: None)
        with pytest.raises(ValueError, match=r"declared.onnx: not an exported .*: for images \[1, 3, 32, 32\] gives"):
            Detector(str(declared)).detect(image)
    with pytest.raises(
        ValueError, match="the network gives 1024 rows for a 32x32 canvas; the mobilenet0.25 preset has 42 priors there"
    ):
        Detector(str(other_onnx(tmp_path / "rows.onnx", loc_width=4))).detect(image)
    cv2.imwrite(str(tmp_path / "image.png"), np.zeros((32, 32, 3), np.uint8))
    code, _, err = run_cli(capsys, "detect", tmp_path / "image.png", "--weights", declared)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "declared.onnx: not an exported" in err, err


def test_a_damaged_cache_entry_is_exported_again(onnx_detector, cache, tmp_path, monkeypatch, crowd):
    """Once named in the error of every later Detector, and never rebuilt."""
    import shutil

    (tmp_path / "onnx").mkdir()
    (entry,) = [shutil.copy(path, tmp_path / "onnx") for path in (cache / "onnx").glob("*.onnx")]
    entry = pathlib.Path(entry)
    entry.write_bytes(b"damaged")
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path))
    again = Detector(WEIGHTS, engine="onnxruntime")
    assert entry.stat().st_size > 1_000_000
    assert_same_faces(again.detect(crowd), onnx_detector.detect(crowd), score_tolerance=0)
