"""ONNX export: the network at any size (both backbones, DCN through ONNX DeformConv, both
exporters), the post-processing graph, and onnxruntime's DeformConv against our kernel."""

import numpy as np
import pytest
import torch
from cli_run import run_cli
from shared_data import HAVE_SHARED, WEIGHTS, match_one_to_one

from retinaface_ext import Detector, RetinaFace, ops
from retinaface_ext.export import DETECTION_OUTPUTS, NETWORK_OUTPUTS, DetectionGraph, to_onnx
from retinaface_ext.models import InferenceRetinaFace

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

SIZES = [(240, 320), (480, 640), (624, 1024)]  # (H, W): 320x240, 640x480, 1024x624
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")


def images(batch, height, width, seed=0):
    """Network inputs: BGR in 0..255 minus the mean."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g) * 255 - torch.tensor([104.0, 117.0, 123.0])[:, None, None]


def session(path):
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        if "DeformConv" in str(error):
            pytest.xfail(f"onnxruntime {ort.__version__} cannot run ONNX DeformConv: {error}")
        raise


def with_deformations(model, seed=0):
    """Offsets of a few pixels and masks far from 0.5: the deformation matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "conv_offset"):
                module.conv_offset.weight.normal_(0, 0.05, generator=g)
                module.conv_offset.bias.normal_(0, 1.5, generator=g)
    return model


def random_resnet(seed=0):
    """A ResNet-50 RetinaFace with BatchNorm statistics that keep its activations in range
    and heads whose outputs are large enough to show differences."""
    torch.manual_seed(seed)
    model = RetinaFace("resnet50").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(1, 4)
                module.weight.uniform_(0.2, 0.5)
        for heads in (model.ClassHead, model.BboxHead, model.LandmarkHead):
            for head in heads:
                head.conv1x1.weight.mul_(20)
    return model


def models():
    plain = RetinaFace.from_checkpoint(WEIGHTS) if HAVE_SHARED else RetinaFace("mobilenet0.25")
    dcn = RetinaFace.from_checkpoint(WEIGHTS, dcn=True) if HAVE_SHARED else RetinaFace("mobilenet0.25", dcn=True)
    return {
        "mobilenet0.25": plain.eval(),
        "resnet50": random_resnet(),
        "mobilenet0.25+dcn": with_deformations(dcn).eval(),
    }


MODELS = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each case exported once: (model, exporter) -> path."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name, exporter="dynamo"):
        if name not in MODELS:
            MODELS.update(models())
        if (name, exporter) not in cache:
            path = folder / f"{name}-{exporter}.onnx"
            to_onnx(MODELS[name], path, exporter=exporter, check=False)
            cache[name, exporter] = path
        return MODELS[name], cache[name, exporter]

    return get


@pytest.mark.parametrize(
    "name, exporter",
    [
        ("mobilenet0.25", "dynamo"),
        ("mobilenet0.25", "torchscript"),
        ("resnet50", "dynamo"),
        ("mobilenet0.25+dcn", "dynamo"),
        ("mobilenet0.25+dcn", "torchscript"),
    ],
)
def test_round_trip_at_three_sizes_and_batch_two(exported, name, exporter):
    model, path = exported(name, exporter)
    network = InferenceRetinaFace(model, channels_last=False, fuse_activations=False)
    run = session(path)
    for height, width in SIZES:
        x = images(2, height, width)
        with torch.no_grad():
            expected = network(x)
        found = run.run(list(NETWORK_OUTPUTS), {"images": x.numpy()})
        for label, want, got in zip(NETWORK_OUTPUTS, expected, found):
            assert want.abs().max() > 0.01, "outputs this small would hide differences"
            torch.testing.assert_close(
                torch.from_numpy(got),
                want,
                rtol=1e-4,
                atol=1e-4,
                msg=lambda m: f"{name} {exporter} {label} at {height}x{width}: {m}",
            )


@needs_shared  # a random network's heads barely move with the offsets (2e-4 where 1e-2 is asked)
def test_the_deformations_matter(exported):
    """The DCN case would pass on a model whose offsets did nothing: they do not."""
    model, _ = exported("mobilenet0.25+dcn")
    still = with_deformations(RetinaFace.from_checkpoint(model.state_dict())).eval()
    with torch.no_grad():
        for module in still.modules():
            if hasattr(module, "conv_offset"):
                module.conv_offset.weight.zero_()
                module.conv_offset.bias.zero_()
        x = images(1, 240, 320)
        moved, fixed = model(x), still(x)
    assert (moved[1] - fixed[1]).abs().max() > 100 * 1e-4


def test_graphs_are_dynamic_with_size_driven_resizes_and_deform_conv(exported):
    for name, deformable in (("mobilenet0.25", 0), ("mobilenet0.25+dcn", 15)):
        graph = onnx.load(str(exported(name)[1])).graph
        dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
        assert [i.name for i in graph.input] == ["images"] and isinstance(dims[0][0], str) and dims[0][1] == 3
        assert all(isinstance(d, str) for d in dims[0][2:])
        assert [o.name for o in graph.output] == list(NETWORK_OUTPUTS)
        resizes = [n for n in graph.node if n.op_type == "Resize"]
        assert len(resizes) == 2 and all(len(n.input) == 4 and n.input[3] for n in resizes)  # by sizes
        assert sum(n.op_type == "DeformConv" for n in graph.node) == deformable


def test_fixed_size_export_and_the_report(tmp_path):
    model = RetinaFace("mobilenet0.25").eval()
    report = to_onnx(model, tmp_path / "fixed.onnx", dynamic=False, size=(160, 224), batch=2)
    assert report.checked_with == ort.__version__ and report.size_bytes == (tmp_path / "fixed.onnx").stat().st_size
    assert max(report.differences.values()) < 1e-4 and "checked with onnxruntime" in str(report)
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 160, 224]


def test_bad_arguments_are_named(tmp_path):
    model = RetinaFace("mobilenet0.25", dcn=True)
    with pytest.raises(ValueError, match="a DCN model needs opset 19 or later"):
        to_onnx(model, tmp_path / "a.onnx", opset=18)
    with pytest.raises(ValueError, match="post-processing graph needs exporter='dynamo'"):
        to_onnx(model, tmp_path / "a.onnx", postprocess=True, exporter="torchscript")
    with pytest.raises(ValueError, match="exporter must be one of"):
        to_onnx(model, tmp_path / "a.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="size must be at least 32 x 32"):
        to_onnx(model, tmp_path / "a.onnx", size=(16, 640))
    with pytest.raises(ValueError, match="fuses activations into oneDNN calls"):
        to_onnx(InferenceRetinaFace(model), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())


@needs_shared
def test_the_post_processing_graph_returns_detect_faces_contract(tmp_path, crowd):
    """The ONNX detection graph and our detect_faces op (the .pt2 package's graph, run
    eagerly) on the crowd photo: the same outputs by name, shape, dtype and value."""
    report = to_onnx(WEIGHTS, tmp_path / "detector.onnx", postprocess=True, check=False)
    assert report.outputs == DETECTION_OUTPUTS == ("boxes", "scores", "landmarks", "counts")
    graph = onnx.load(str(tmp_path / "detector.onnx")).graph
    assert any(n.op_type == "NonMaxSuppression" for n in graph.node)
    assert [o.name for o in graph.output] == list(DETECTION_OUTPUTS)
    raw = torch.from_numpy(crowd).permute(2, 0, 1).float()
    batch = torch.stack([raw, raw.flip(-1)])
    found = session(tmp_path / "detector.onnx").run(None, {"images": batch.numpy()})
    network = InferenceRetinaFace(RetinaFace.from_checkpoint(WEIGHTS), channels_last=False, fuse_activations=False)
    with torch.no_grad():
        expected = DetectionGraph(network.eval()).eval()(batch)
    counts = expected[3].tolist()
    assert counts[0] > 20 and found[3].tolist() == counts
    for name, want, got in zip(DETECTION_OUTPUTS, expected, found):
        assert got.shape == tuple(want.shape) and got.dtype == want.numpy().dtype, name
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    ours = Detector(WEIGHTS, device="cpu").detect(crowd)
    rows = np.concatenate([found[0][: counts[0]], found[1][: counts[0], None], found[2][: counts[0]]], 1)
    expected_rows, best, iou = match_one_to_one(rows.astype(np.float64), ours)
    assert float(iou.min()) >= 0.99  # and the Detector finds the same faces


def onnx_deform_conv(x, weight, offset, mask, bias, stride=1, padding=1, dilation=1, groups=1, offset_groups=1):
    from onnx import TensorProto, helper

    names = ["X", "W", "offset", "B", "mask"]
    node = helper.make_node(
        "DeformConv",
        names,
        ["Y"],
        dilations=[dilation] * 2,
        group=groups,
        kernel_shape=list(weight.shape[2:]),
        offset_group=offset_groups,
        pads=[padding] * 4,
        strides=[stride] * 2,
    )
    graph = helper.make_graph(
        [node],
        "deform_conv",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    feed = dict(zip(names, (t.numpy() for t in (x, weight, offset, bias, mask))))
    return torch.from_numpy(session_from_bytes(model.SerializeToString()).run(None, feed)[0])


def session_from_bytes(data):
    try:
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:
        pytest.xfail(f"onnxruntime {ort.__version__} cannot run ONNX DeformConv: {error}")


@pytest.mark.parametrize(
    "case", ["small offsets", "large offsets", "far outside", "border integers", "groups", "dilation and stride"]
)
def test_onnxruntime_deform_conv_equals_our_kernel(case):
    """The export maps our op onto DeformConv one to one: onnxruntime must compute the same
    function, border rule included (integer coordinates at -1 and H - 1, points far out)."""
    g = torch.Generator().manual_seed(0)
    N, C, H, W, O, groups, offset_groups, stride, padding, dilation = 2, 8, 9, 11, 4, 1, 1, 1, 1, 1
    if case == "groups":
        groups, offset_groups, O = 2, 2, 6
    if case == "dilation and stride":
        stride, padding, dilation = 2, 2, 2
    Ho = (H + 2 * padding - dilation * 2 - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * 2 - 1) // stride + 1
    x = torch.randn(N, C, H, W, generator=g)
    weight = torch.randn(O, C // groups, 3, 3, generator=g)
    bias = torch.randn(O, generator=g)
    mask = torch.rand(N, offset_groups * 9, Ho, Wo, generator=g)
    scale = {"small offsets": 0.5, "large offsets": 3.0, "far outside": 20.0}.get(case, 2.0)
    offset = torch.randn(N, offset_groups * 18, Ho, Wo, generator=g) * scale
    if case == "border integers":
        offset = torch.tensor([-1.0, -2.0, 8.0, 9.0, 10.0, 0.0, -0.5])[torch.randint(0, 7, offset.shape, generator=g)]
    ours = ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    theirs = onnx_deform_conv(x, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups)
    torch.testing.assert_close(
        theirs, ours, rtol=1e-5, atol=1e-5, msg=lambda m: f"onnxruntime {ort.__version__} DeformConv, {case}: {m}"
    )


@needs_shared
def test_the_export_command(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, printed, _ = run_cli(capsys, "export", "--weights", WEIGHTS, "--onnx", out, "--size", "96", "128")
    assert code == 0
    assert "fixed size" in printed and "checked with onnxruntime" in printed
    assert "outputs: loc, logits, landmarks" in printed
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 128]
    before = out.read_bytes()
    code, _, error = run_cli(capsys, "export", "--weights", WEIGHTS, "--onnx", out)
    assert code == 2 and "the file exists (add --overwrite to replace it)" in error
    assert out.read_bytes() == before
    code, _, error = run_cli(capsys, "export", "--weights", tmp_path / "none.pth", "--onnx", tmp_path / "x.onnx")
    assert code == 2 and "no such checkpoint file" in error


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch, capsys):
    """onnxruntime disagreeing with PyTorch is an error, before the file is written."""
    model = RetinaFace("mobilenet0.25").eval()
    real = ort.InferenceSession

    class Wrong:
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def run(self, names, feed):
            return [out + 1 for out in self.session.run(names, feed)]

    monkeypatch.setattr(ort, "InferenceSession", Wrong)
    with pytest.raises(RuntimeError, match=r"differs from PyTorch by 1 in loc"):
        to_onnx(model, tmp_path / "m.onnx", dynamic=False, size=(64, 64))
    assert not (tmp_path / "m.onnx").exists()
    if HAVE_SHARED:
        code, _, error = run_cli(
            capsys, "export", "--weights", WEIGHTS, "--onnx", tmp_path / "m.onnx", "--size", "64", "64"
        )
        assert code == 2 and "nothing written" in error and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "opset, message",
    [
        (999, r"opset must be in \[1, \d+\] \(the opsets onnx .* knows\), got 999"),
        (1, "opset 1 was asked for, but torch's dynamo exporter wrote opset 18"),  # once reported as opset 1
    ],
)
def test_an_opset_the_exporter_cannot_write_is_refused(tmp_path, opset, message):
    with pytest.raises(ValueError, match=message):
        to_onnx(
            RetinaFace("mobilenet0.25").eval(),
            tmp_path / "m.onnx",
            dynamic=False,
            size=(64, 64),
            opset=opset,
            check=False,
        )
    assert not (tmp_path / "m.onnx").exists()
