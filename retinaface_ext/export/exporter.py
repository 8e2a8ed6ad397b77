"""to_onnx: a RetinaFace exported, checked with onnxruntime where it is installed, and
written whole (see the package docstring for the graphs)."""

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import torch

from ..files import atomic_write_bytes
from ..models import InferenceRetinaFace, RetinaFace
from ..models.config import DetectionSettings
from .common import check_batch, check_size, compare_outputs, example_images, exported_module, prepare_network
from .graph import DETECTION_OUTPUTS, NETWORK_INPUTS, NETWORK_OUTPUTS
from .onnx_ops import DEFORM_CONV_OPSET, custom_translations, register_torchscript_symbolics

log = logging.getLogger("retinaface_ext.export")
EXPORTERS = ("dynamo", "torchscript")
INSTALL_HINT = 'pip install "retinaface_ext[onnx]"'


@dataclass
class ExportReport:
    """What :func:`to_onnx` wrote and how it checked it."""

    path: str
    opset: int
    exporter: str
    dynamic: bool
    postprocess: bool
    dcn: bool
    seconds: float
    size_bytes: int
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    #: onnxruntime's version where the export was run and compared with PyTorch, else None
    checked_with: Optional[str] = None
    #: the largest absolute difference from PyTorch's outputs, per output, at each checked size
    differences: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        graph = "network + post-processing" if self.postprocess else "network"
        text = (
            f"{self.path}: {graph}{' with DCN' if self.dcn else ''}, opset {self.opset}, "
            f"{'dynamic' if self.dynamic else 'fixed'} size, {self.size_bytes / 1e6:.1f} MB, "
            f"exported in {self.seconds:.1f} s ({self.exporter} exporter)"
        )
        if self.checked_with is None:
            return text + "; not checked (onnxruntime is not installed)"
        worst = max(self.differences.values(), default=0.0)
        return text + f"; checked with onnxruntime {self.checked_with}: max |difference| {worst:.2e}"


def to_onnx(
    model: Union[RetinaFace, InferenceRetinaFace, str, os.PathLike, dict],
    path: Union[str, os.PathLike],
    dynamic: bool = True,
    opset: Optional[int] = None,
    postprocess: bool = False,
    size: Tuple[int, int] = (640, 640),
    batch: int = 1,
    exporter: str = "dynamo",
    check: bool = True,
    settings: Optional[DetectionSettings] = None,
) -> ExportReport:
    """Export a RetinaFace (a model, or a checkpoint as :class:`~retinaface_ext.Detector`
    takes it) to the ONNX file ``path`` (written whole or not at all) and return an
    :class:`ExportReport`.

    Args:
        dynamic: batch, height and width dynamic (default); else fixed at ``batch`` and
            ``size``.
        opset: the ONNX opset; None means 19, the first with ``DeformConv``.
        postprocess: the detection graph instead of the network alone (see the module
            docstring), reading detections as ``settings`` says (default: the Detector's).
        size, batch: the example input's (height, width) and batch.
        exporter: ``"dynamo"`` (torch.export-based, the default) or ``"torchscript"``
            (network only).
        check: run the graph with onnxruntime, when it is installed, on the example input
            (and a second size when dynamic) and compare with PyTorch; a difference
            above 1e-3 (relative to the outputs' size) raises, and nothing is written.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"to_onnx: exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if postprocess and exporter != "dynamo":
        raise ValueError(
            "to_onnx: the post-processing graph needs exporter='dynamo' (the TorchScript exporter "
            "cannot keep the priors' sizes symbolic)"
        )
    opset = DEFORM_CONV_OPSET if opset is None else int(opset)
    onnx = _require("onnx", "ONNX export")
    if not 1 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(
            f"to_onnx: opset must be in [1, {onnx.defs.onnx_opset_version()}] (the opsets onnx "
            f"{onnx.__version__} knows), got {opset}"
        )
    network = prepare_network(model, "to_onnx")
    if network.dcn and opset < DEFORM_CONV_OPSET:
        raise ValueError(
            f"to_onnx: a DCN model needs opset {DEFORM_CONV_OPSET} or later (ONNX DeformConv), got {opset}"
        )
    height, width = check_size(size, "to_onnx")
    batch = check_batch(batch, "to_onnx")
    module = exported_module(network, postprocess, settings, onnx=True)
    outputs = DETECTION_OUTPUTS if postprocess else NETWORK_OUTPUTS
    example = example_images(batch, height, width, raw=postprocess)
    started = time.perf_counter()
    data = _export(module, example, dynamic, opset, exporter, outputs)
    seconds = time.perf_counter() - started
    written = _written_opset(data)
    if written != opset:  # torch's exporter falls back to a version it can write, silently
        raise ValueError(
            f"to_onnx: opset {opset} was asked for, but torch's {exporter} exporter wrote opset "
            f"{written} (it cannot convert to {opset}); nothing written"
        )
    report = ExportReport(
        os.fspath(path), opset, exporter, dynamic, postprocess, network.dcn, seconds, len(data), NETWORK_INPUTS, outputs
    )
    if check:  # before the file is written: a graph that fails its check is not left behind
        _check(report, data, module, example, dynamic)
    atomic_write_bytes(path, data)
    log.info("%s", report)
    return report


def _written_opset(data: bytes) -> int:
    """The default-domain opset that a serialised ONNX model imports."""
    model = _require("onnx", "ONNX export").load_model_from_string(data)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _require(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{why} needs {module} ({error}): {INSTALL_HINT}") from None


def _export(module, example, dynamic: bool, opset: int, exporter: str, outputs) -> bytes:
    import io

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # our shape checks, while tracing
        if exporter == "dynamo":
            _require("onnxscript", "ONNX export")
            shapes = None
            if dynamic:
                dims = {
                    0: torch.export.Dim("batch"),
                    2: torch.export.Dim("height", min=32),
                    3: torch.export.Dim("width", min=32),
                }
                shapes = {"images": dims}
            program = torch.onnx.export(
                module,
                (example,),
                None,
                dynamo=True,
                input_names=list(NETWORK_INPUTS),
                output_names=list(outputs),
                dynamic_shapes=shapes,
                opset_version=opset,
                custom_translation_table=custom_translations(),
                verbose=False,
            )
            return program.model_proto.SerializeToString()
        register_torchscript_symbolics()
        buffer = io.BytesIO()
        axes = None
        if dynamic:
            axes = {"images": {0: "batch", 2: "height", 3: "width"}}
            axes.update({name: {0: "batch", 1: "priors"} for name in outputs})
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=list(NETWORK_INPUTS),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
        )
        return buffer.getvalue()


def _check(report: ExportReport, data: bytes, module, example, dynamic: bool) -> None:
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not run (%s)", report.path, INSTALL_HINT)
        return
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs = [example]
    if dynamic:  # another size, to see the graph follow it
        batch, _, height, width = example.shape
        inputs.append(example_images(batch, height + 32 + 8, width + 8, raw=report.postprocess, seed=1))
    for images in inputs:
        with torch.no_grad():
            expected = [t.numpy() for t in module(images)]
        found = session.run(list(report.outputs), {report.inputs[0]: images.numpy()})
        compare_outputs(
            "to_onnx",
            f"onnxruntime {onnxruntime.__version__}",
            report.outputs,
            expected,
            found,
            images,
            report.differences,
        )
    report.checked_with = onnxruntime.__version__
