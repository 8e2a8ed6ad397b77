"""Where a network runs: a device argument checked against what this machine and this
build can run."""

import torch

from . import _extension


def resolve_device(device) -> torch.device:
    """``device`` as a torch.device that can run here, or a ValueError saying why not."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is not a CUDA build" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {str(device)!r}: CUDA is not available here ({why})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA devices are visible")
        if _extension.is_available() and "cuda" not in _extension.compiled_backends():
            raise ValueError(f"device {str(device)!r}: retinaface_ext was built without CUDA kernels")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved
