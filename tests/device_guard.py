"""A second device on a machine without one: the ``device`` fixture's CPU runs under
:class:`DeviceGuard`, which fails a test the way a GPU would where the test leaves a
tensor on the host beside the fixture's tensors.

On a CPU-only machine "cpu" is both the host and the device under test, so a test that
draws ``grad_out`` on the host for a device output passes here and fails on CUDA. The
guard tells the two apart by how a tensor was made in test code (a tests/ or benchmarks/
file): with ``device=device`` or ``.to(device)`` it is on the device; by a factory without
``device=``, ``.cpu()`` or ``.to("cpu")`` it is on the host (``torch.from_numpy`` is not
seen: torch does not show it to function modes). Results inherit where their inputs are.
An op that takes device tensors together with host tensors of one or more dimensions (a
CPU scalar is fine on CUDA too) raises, and so does ``.numpy()`` of a device tensor. Like
a real move, ``.to(device)`` and ``.cpu()`` copy.

Tensors made inside the library or torch are not marked (the library resolves devices
itself); moves made there copy but leave the copy unmarked. The guard is thus a lower
bound: what it flags a GPU would break, not everything a GPU would break.
"""

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FOLDERS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("tests", "benchmarks"))
# frames that only pass a call on (torch's dispatch to modes, Tensor's Python methods)
_PASSING_ON = tuple(
    os.path.join(os.path.dirname(torch.__file__), name) for name in ("overrides.py", "_tensor.py", "functional.py")
) + (os.path.abspath(__file__),)

DEVICE, HOST = "device", "host"
_TAG = "_device_guard_tag"

_FACTORIES = {
    getattr(torch, name)
    for name in (
        "tensor",
        "as_tensor",
        "asarray",
        "zeros",
        "ones",
        "empty",
        "full",
        "rand",
        "randn",
        "randint",
        "randperm",
        "arange",
        "linspace",
        "logspace",
        "eye",
        "empty_strided",
        "normal",
    )
}
_LIKE = {getattr(torch, f"{name}_like") for name in ("zeros", "ones", "empty", "full", "rand", "randn", "randint")}
_LIKE |= {getattr(torch.Tensor, f"new_{name}") for name in ("tensor", "zeros", "ones", "empty", "full")}
_DEVICE_PROPERTY = torch.Tensor.device
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
# ops that take tensors of two devices by design: copies, indexing by host indices, and
# assignment (which copies a host value, as copy_ does)
_MIXING = {torch.Tensor.copy_, torch.Tensor.__getitem__, torch.Tensor.__setitem__} | _MOVES | _LIKE


class DeviceMismatch(RuntimeError):
    pass


class DeviceName(str):
    """The device fixture's value under the guard: equal to "cpu", but recognisable. It is
    also what ``.device`` of a device tensor gives in test code, so that ``x.to(y.device)``
    moves ``x`` to the device."""

    type, index = "cpu", None

    def __eq__(self, other):  # a device made by the library is torch.device("cpu") here
        return str.__eq__(self, other) if isinstance(other, str) else other == torch.device("cpu")

    def __ne__(self, other):
        return not self == other

    __hash__ = str.__hash__


def tag(tensor):
    return getattr(tensor, _TAG, None)


def _tensors(args, kwargs):
    """The tensors among the arguments and in lists or tuples of them (one level: not in
    dicts, such as deepcopy's memo)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(item for item in value if isinstance(item, torch.Tensor))
    return found


def _set_tag(tensor, where):
    if isinstance(tensor, torch.Tensor) and where is not None:
        setattr(tensor, _TAG, where)


def _in_test_code() -> bool:
    """Whether the call comes from a test or benchmark (not from the library or torch)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PASSING_ON):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(TEST_FOLDERS)


def _describe(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


class DeviceGuard(TorchFunctionMode):
    """Active for one test; ``self.device`` is the value that marks the device."""

    def __init__(self):
        super().__init__()
        self.device = DeviceName("cpu")

    def _target(self, args, kwargs):
        """Where a move or factory sends its result: DEVICE, HOST or None (not said)."""
        for value in (kwargs.get("device"), *args):
            if isinstance(value, DeviceName):
                return DEVICE
            if isinstance(value, (str, torch.device)) and str(value).split(":")[0] == "cpu":
                return HOST
            if isinstance(value, torch.Tensor) and value is not args[0]:  # .to(other)
                return tag(value)
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is _DEVICE_PROPERTY:
            if tag(args[0]) == DEVICE and _in_test_code():
                return self.device
            return func(*args, **kwargs)
        tensors = _tensors(args, kwargs)
        on_device = any(tag(t) == DEVICE for t in tensors)
        if func not in _MIXING and on_device:
            on_host = [t for t in tensors if tag(t) == HOST and t.dim() > 0]
            if on_host:
                raise DeviceMismatch(
                    f"{_describe(func)} takes tensors of the device under test together with a host tensor of "
                    f"shape {tuple(on_host[0].shape)}: on CUDA this fails. Make it with device=device or move it "
                    f"with .to(device)."
                )
            if func in (torch.Tensor.numpy, torch.Tensor.__array__):
                raise DeviceMismatch(
                    "numpy() of a tensor on the device under test: on CUDA this fails; call .cpu() first"
                )
        if func in _FACTORIES and kwargs.get("generator") is not None and isinstance(kwargs.get("device"), DeviceName):
            raise DeviceMismatch(
                f"{_describe(func)}(..., generator=..., device=device): a CPU generator cannot "
                f"draw on CUDA; draw on the host and move the values with .to(device)"
            )
        result = func(*args, **kwargs)
        if func in _MOVES:
            return self._moved(func, args, kwargs, result)
        if func in _FACTORIES or func in _LIKE:
            where = self._target(args, kwargs)
            if where is None and func in _LIKE:
                where = tag(args[0])
            elif where in (None, HOST):  # the host by choice or by default, in test code only
                where = HOST if _in_test_code() else None
        elif func in _MIXING:  # copies and indexing: where their tensor is
            where = tag(args[0])
        else:
            where = DEVICE if on_device else (HOST if any(tag(t) == HOST for t in tensors) else None)
        if where is not None:
            for output in _tensors((result,), {}):
                _set_tag(output, where)
        return result

    def _moved(self, func, args, kwargs, result):
        source = args[0]
        where = (
            DEVICE if func is torch.Tensor.cuda else HOST if func is torch.Tensor.cpu else self._target(args, kwargs)
        )
        if where is None:  # a change of dtype or layout only
            if result is not source:
                _set_tag(result, tag(source))
            return result
        if func is torch.Tensor.to and where == HOST and not _in_test_code():
            where = None  # the library or torch moving to a device it resolved: "cpu" either way here
        if result is source and where != tag(source):
            result = source.clone()
        _set_tag(result, where)
        return result
