"""to_pt2: a RetinaFace as one AOTInductor package (``.pt2``): torch.export of the network,
or of the network and our ``detect_faces`` post-processing, compiled ahead of time for the
CPU or CUDA. The package runs without Python (``AOTIModelPackageLoader`` in C++, see
``examples/cpp``) as long as our ops' library (``retinaface_ext/_C*.so``) is loaded first:
the post-processing and deformable convolutions are calls into it."""

import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..models import RetinaFace
from ..models.config import DetectionSettings
from .common import check_batch, check_size, compare_outputs, example_images, exported_module, prepare_network
from .graph import DETECTION_OUTPUTS, NETWORK_INPUTS, NETWORK_OUTPUTS
from .pt2_files import _first_line, _load, file_digest, record_built

#: The sizes a dynamic package takes: the network's coarsest level needs more than 32 px.
MIN_SIDE, MAX_SIDE, MAX_BATCH = 33, 8192, 256
DEVICES = ("cpu", "cuda")


@dataclass
class Pt2Report:
    """What :func:`to_pt2` wrote and how it checked it."""

    path: str
    device: str
    postprocess: bool
    dcn: bool
    dynamic: bool
    export_seconds: float
    compile_seconds: float
    size_bytes: int
    outputs: Tuple[str, ...]
    #: the largest absolute difference from the eager module's outputs, per output
    differences: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        graph = "network + post-processing" if self.postprocess else "network"
        worst = max(self.differences.values(), default=0.0)
        return (
            f"{self.path}: {graph}{' with DCN' if self.dcn else ''} for {self.device}, "
            f"{'dynamic' if self.dynamic else 'fixed'} size, {self.size_bytes / 1e6:.1f} MB, exported in "
            f"{self.export_seconds:.1f} s and compiled in {self.compile_seconds:.1f} s; checked against "
            f"eager PyTorch: max |difference| {worst:.2e}"
        )


def to_pt2(
    model: Union[RetinaFace, str, os.PathLike, dict],
    path: Union[str, os.PathLike],
    device: str = "cpu",
    postprocess: bool = True,
    dynamic: bool = True,
    size: Tuple[int, int] = (640, 640),
    batch: int = 1,
    settings: Optional[DetectionSettings] = None,
    check: bool = True,
) -> Pt2Report:
    """Export a RetinaFace (a model, a checkpoint path or dict, or published weights by
    name) to the AOTInductor package ``path`` and return a :class:`Pt2Report`.

    Args:
        device: ``"cpu"`` or ``"cuda"``: where the package runs (compiled for it).
        postprocess: the network and the ``detect_faces`` post-processing (inputs BGR in
            0..255; outputs :data:`DETECTION_OUTPUTS`), reading detections as
            ``settings`` says; else the network alone (inputs minus the mean; outputs
            ``loc``, ``logits``, ``landmarks``, as the ONNX network's).
        dynamic: batch 1 to 256, height and width 33 to 8192 (any size, not only multiples
            of 32); else fixed at ``batch`` and ``size``.
        size, batch: the example input's (height, width) and batch.
        check: run the package on the example input (and a second size when dynamic) and
            compare with the eager module: a difference above 1e-3 raises.

    The package is compiled into a temporary file beside ``path`` and renamed only when
    everything succeeded: a failure leaves nothing behind and raises RuntimeError in one
    line. Export takes seconds; compiling, tens of seconds (MobileNet-0.25 on 2 CPU cores:
    about 30 s).
    """
    if device not in DEVICES:
        raise ValueError(f"to_pt2: device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("to_pt2: device='cuda' needs a visible CUDA device (the package is compiled on it)")
    height, width = check_size(size, "to_pt2")
    if dynamic and min(height, width) < MIN_SIDE:
        raise ValueError(f"to_pt2: a dynamic package needs an example of at least {MIN_SIDE} x {MIN_SIDE}")
    batch = check_batch(batch, "to_pt2")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"to_pt2: {path} is a folder")
    created = _make_folder(os.path.dirname(os.path.abspath(path)))  # before minutes of work, not after
    network = prepare_network(model, "to_pt2").to(device)
    module = exported_module(network, postprocess, settings, onnx=False)
    # torch.export specialises a dimension of size 1: a dynamic batch needs an example of 2.
    example = example_images(max(batch, 2) if dynamic else batch, height, width, raw=postprocess).to(device)
    shapes = None
    if dynamic:
        shapes = {
            "images": {
                0: torch.export.Dim("batch", min=1, max=MAX_BATCH),
                2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE),
            }
        }
    outputs = DETECTION_OUTPUTS if postprocess else NETWORK_OUTPUTS
    metadata = {
        "retinaface_ext.backbone": network.config.backbone,
        "retinaface_ext.dcn": str(int(network.dcn)),
        "retinaface_ext.postprocess": str(int(postprocess)),
        "retinaface_ext.inputs": ",".join(NETWORK_INPUTS),
        "retinaface_ext.outputs": ",".join(outputs),
        "retinaface_ext.torch": torch.__version__,
    }
    temporary = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp.pt2")
    try:
        started = time.perf_counter()
        with torch.no_grad():
            try:
                program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            except Exception as error:
                raise RuntimeError(f"to_pt2: torch.export failed: {_first_line(error)}") from error
            exported = time.perf_counter()
            try:
                # Freezing folds the weights into the compiled code as constants (on the CPU
                # it prepacks the convolutions for oneDNN): 28 -> 20 ms a forward at 1024x624.
                configs = {"freezing": True, "aot_inductor.metadata": metadata}
                torch._inductor.aoti_compile_and_package(program, package_path=temporary, inductor_configs=configs)
            except Exception as error:
                raise RuntimeError(f"to_pt2: AOTInductor failed: {_first_line(error)}") from error
        compiled = time.perf_counter()
        report = Pt2Report(
            path,
            device,
            postprocess,
            network.dcn,
            dynamic,
            exported - started,
            compiled - exported,
            os.path.getsize(temporary),
            outputs,
        )
        if check:
            _check(report, temporary, module, example, dynamic)
        digest = file_digest(temporary)
        os.replace(temporary, path)
        record_built(digest)
    except BaseException:
        for folder in reversed(created):
            if not os.listdir(folder):
                os.rmdir(folder)
        raise
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return report


def _make_folder(folder: str) -> List[str]:
    """Create ``folder`` and the folders above it that are missing (as ``to_onnx``'s
    write does); returns those it created, top first. ValueError naming the first
    existing one when it is a file or cannot be written."""
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"to_pt2: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"to_pt2: cannot write into {folder}")
    for new in reversed(missing):
        os.mkdir(new)
    return missing[::-1]


def _check(report: Pt2Report, package_path: str, module, example, dynamic: bool) -> None:
    package = _load(package_path, package_path, -1)
    inputs = [example]
    if dynamic:
        batch, _, height, width = example.shape
        inputs.append(example.new_empty(batch + 1, 3, height + 37, width + 53).uniform_(0, 255))
    for images in inputs:
        with torch.no_grad():
            expected, got = module(images), package(images)
        compare_outputs(
            "to_pt2", "the package", report.outputs, _host(expected), _host(got), images, report.differences
        )


def _host(tensors):
    return [t.detach().cpu().numpy() for t in tensors]
