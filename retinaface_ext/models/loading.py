"""What a checkpoint argument may be, resolved in one place: the name of published weights
(``"mobilenet0.25"``: :mod:`.weights`, downloaded and checked), a file, or a state dict."""

import os
from typing import Dict, Union

import torch

from . import weights
from .checkpoint import read_checkpoint


def read_state_dict(checkpoint: Union[str, os.PathLike, dict]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint (a path, a dict, or the name of published weights), on
    the CPU, without the ``module.`` prefix of DataParallel. Files are read with
    ``weights_only=True``; a name that is also an existing path means the file."""
    if weights.is_published_name(checkpoint):
        return weights.load_published(checkpoint)
    return read_checkpoint(checkpoint)


def source_name(checkpoint) -> str:
    """How errors name a checkpoint: its path or name, else "checkpoint"."""
    return os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
