"""The exported network in an onnxruntime session, in the Detector's place for the
PyTorch network (``Detector(..., engine="onnxruntime")``): the same pre-processing,
batching and post-processing (our kernels) around onnxruntime's forward pass."""

import hashlib
import os
from typing import Optional, Tuple, Union

import torch

from . import __version__
from .export.graph import NETWORK_INPUTS, NETWORK_OUTPUTS
from .files import cache_root

INSTALL_HINT = 'pip install onnxruntime (or pip install "retinaface_ext[onnx]")'


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
    from .export import to_onnx

    key = hashlib.sha256(f"{model_digest(model)}:{torch.__version__}:{__version__}".encode()).hexdigest()[:32]
    path = os.path.join(cache_root(), "onnx", f"{key}.onnx")
    if not os.path.isfile(path):
        to_onnx(model, path, dynamic=True, check=False)
    return path


class OnnxRuntimeNetwork:
    """An onnxruntime session of an exported network, called like
    :class:`~retinaface_ext.models.InferenceRetinaFace`: ``images [B, 3, H, W]`` float32
    on the CPU -> ``loc, logits, landmarks`` as tensors (sharing onnxruntime's memory).

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
        if inputs != NETWORK_INPUTS or outputs != NETWORK_OUTPUTS:
            raise ValueError(f"{self.path}: not an exported RetinaFace network: inputs {list(inputs)}, outputs "
                             f"{list(outputs)} (expected {list(NETWORK_INPUTS)} and {list(NETWORK_OUTPUTS)}; "
                             f"export with retinaface_ext.export.to_onnx(..., postprocess=False))")
        self.version = onnxruntime.__version__

    def __call__(self, images: torch.Tensor, padding_mask=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if padding_mask is not None:
            raise ValueError("the onnxruntime engine runs equally sized images together, without padding")
        if images.device.type != "cpu" or images.dtype != torch.float32:
            raise ValueError(f"the onnxruntime engine takes float32 images on the CPU, got {images.dtype} on "
                             f"{images.device}")
        feed = {NETWORK_INPUTS[0]: images.contiguous().numpy()}
        return tuple(torch.from_numpy(out) for out in self.session.run(list(NETWORK_OUTPUTS), feed))
