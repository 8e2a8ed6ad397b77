"""The exported network in an onnxruntime session, in the Detector's place for the
PyTorch network (``Detector(..., engine="onnxruntime")``): the same pre-processing,
batching and post-processing (our kernels) around onnxruntime's forward pass."""

import hashlib
import logging
import os
from typing import Optional, Tuple, Union

import torch

from .._version import __version__
from ..export.graph import DETECTION_OUTPUTS, NETWORK_INPUTS, NETWORK_OUTPUTS, OLD_DETECTION_OUTPUTS
from ..files import cache_root

INSTALL_HINT = 'pip install onnxruntime (or pip install "retinaface_ext[onnx]")'
#: The last dimension of each output: box offsets, the two class logits, five (x, y) points.
OUTPUT_WIDTHS = (4, 2, 10)
log = logging.getLogger("retinaface_ext.inference")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"engine='onnxruntime' needs onnxruntime ({error}): {INSTALL_HINT}") from None
    return onnxruntime


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, shapes, dtypes and values), its class and DCN flag."""
    digest = hashlib.sha256(f"{type(model).__name__}:{getattr(model, 'dcn', False)}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_export(model: torch.nn.Module) -> str:
    """The network of ``model`` (a RetinaFace) exported with dynamic sizes into the cache
    (``<cache>/onnx/<digest>.onnx``, see :func:`retinaface_ext.files.cache_root`), once
    per weights, torch and retinaface_ext version; returns the path."""
    from ..export import to_onnx

    key = hashlib.sha256(f"{model_digest(model)}:{torch.__version__}:{__version__}".encode()).hexdigest()[:32]
    path = os.path.join(cache_root(), "onnx", f"{key}.onnx")
    if not os.path.isfile(path):
        to_onnx(model, path, dynamic=True, check=False)
    return path


def cached_network(model: torch.nn.Module) -> "OnnxRuntimeNetwork":
    """The session of :func:`cached_export`'s file; a cache entry that onnxruntime cannot
    load (damaged since it was written) is exported again."""
    from ..export import to_onnx

    path = cached_export(model)
    try:
        return OnnxRuntimeNetwork(path)
    except ValueError as error:
        log.warning("%s; exporting it again", error)
        to_onnx(model, path, dynamic=True, check=False)
        return OnnxRuntimeNetwork(path)


class OnnxRuntimeNetwork:
    """An onnxruntime session of an exported network, called like
    :class:`~retinaface_ext.models.InferenceRetinaFace`: ``images [B, 3, H, W]`` float32
    on the CPU -> ``loc, logits, landm`` (named ``loc, logits, landmarks`` in the file) as tensors
    (sharing onnxruntime's memory).

    ``threads``: onnxruntime's intra-op threads (default: torch's thread count, so that
    both engines use the same cores).
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        onnxruntime = import_onnxruntime()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it: {error}") from None
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if outputs in (DETECTION_OUTPUTS, OLD_DETECTION_OUTPUTS):
            raise ValueError(
                f"{self.path}: a detection graph (network + post-processing), not a network; the engine runs "
                f"the network: export with retinaface_ext.export.to_onnx(..., postprocess=False) or "
                f"`retinaface export WEIGHTS --onnx OUT` (without --postprocess)"
            )
        if inputs != NETWORK_INPUTS or outputs != NETWORK_OUTPUTS:
            raise self._not_a_network(
                f"inputs {list(inputs)}, outputs {list(outputs)} (expected "
                f"{list(NETWORK_INPUTS)} and {list(NETWORK_OUTPUTS)})"
            )
        self._check_declared_shapes()
        self.version = onnxruntime.__version__

    def _not_a_network(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: not an exported RetinaFace network: {what}; export with "
            f"retinaface_ext.export.to_onnx(..., postprocess=False)"
        )

    def _check_declared_shapes(self) -> None:
        """The shapes the graph declares, where it declares them: images [B, 3, H, W]
        float, outputs [B, P, 4 / 2 / 10] float."""
        expected = [(NETWORK_INPUTS[0], 4, {1: 3})] + [
            (name, 3, {2: width}) for name, width in zip(NETWORK_OUTPUTS, OUTPUT_WIDTHS)
        ]
        for port, (name, rank, fixed) in zip([*self.session.get_inputs(), *self.session.get_outputs()], expected):
            shape = port.shape
            wrong = port.type != "tensor(float)" or (
                shape is not None
                and (len(shape) != rank or any(isinstance(shape[d], int) and shape[d] != n for d, n in fixed.items()))
            )
            if wrong:
                raise self._not_a_network(f"{name} is {port.type} of shape {shape}")

    def __call__(self, images: torch.Tensor, padding_mask=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if padding_mask is not None:
            raise ValueError("the onnxruntime engine runs equally sized images together, without padding")
        if images.device.type != "cpu" or images.dtype != torch.float32:
            raise ValueError(
                f"the onnxruntime engine takes float32 images on the CPU, got {images.dtype} on {images.device}"
            )
        feed = {NETWORK_INPUTS[0]: images.contiguous().numpy()}
        outputs = self.session.run(list(NETWORK_OUTPUTS), feed)
        # What the graph did not declare: one row per prior and image in each output.
        shapes = [tuple(out.shape) for out in outputs]
        if (
            any(len(s) != 3 or s[:2] != shapes[0][:2] or s[2] != w for s, w in zip(shapes, OUTPUT_WIDTHS))
            or shapes[0][0] != images.shape[0]
        ):
            raise self._not_a_network(f"for images {list(images.shape)} gives {', '.join(map(str, shapes))}")
        return tuple(torch.from_numpy(out) for out in outputs)
