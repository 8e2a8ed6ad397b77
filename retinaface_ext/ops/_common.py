"""Argument handling shared by the op wrappers. Everything here is TorchScript-compatible
or only called from eager code (behind ``torch.jit.is_scripting()``)."""

from typing import List, Optional, Tuple, Union

import torch

from .. import _extension


def check_tensors(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Eager-mode checks before an op runs: every named argument is a tensor (or None),
    and the kernels are loaded (for the device of the first one)."""
    first = None
    for name, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
        if first is None:
            first = value
    _extension.require(first)


def check_pair(op: str, name: str, value) -> Tuple[int, int]:
    """An int or a pair of ints, as a pair; anything else is a TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def int_pair(value: Union[int, Tuple[int, int], List[int]]) -> Tuple[int, int]:
    """The TorchScript-compatible twin of check_pair (no checks)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, tuple):
        return value
    return (value[0], value[1])
