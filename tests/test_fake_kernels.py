"""The fake (meta) kernels that torch.compile and torch.export trace with refuse what the
real kernels refuse, with their messages, instead of tracing shapes the kernels never
produce."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import retinaface_ext  # noqa: F401  (registers the ops)


def _refusals():
    """(name, op arguments) the kernels refuse, each one check of deform_conv_checks.cpp."""

    def case(**changes):
        args = dict(
            input=torch.randn(2, 4, 6, 6),
            weight=torch.randn(6, 2, 3, 3),
            offset=torch.randn(2, 18, 6, 6),
            mask=torch.rand(2, 9, 6, 6),
            bias=torch.randn(6),
        )
        args.update(changes)
        return [args[k] for k in ("input", "weight", "offset", "mask", "bias")] + [1, 1, 1, 1, 1, 1]

    return {
        "empty image": case(input=torch.randn(2, 4, 0, 6)),
        "groups do not divide the outputs": case(weight=torch.randn(5, 2, 3, 3), bias=torch.randn(5)),
        "offset of another size": case(offset=torch.randn(2, 18, 5, 6)),
        "offset groups do not divide the channels": case(offset=torch.randn(2, 54, 6, 6), mask=torch.rand(2, 27, 6, 6)),
        "mask of the wrong channels": case(mask=torch.rand(2, 8, 6, 6)),
        "bias of the wrong length": case(bias=torch.randn(5)),
        "weight of another dtype": case(weight=torch.randn(6, 2, 3, 3, dtype=torch.float64)),
    }


def faked(mode, args):
    return [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("name", list(_refusals()))
def test_deform_conv2d(name):
    args = _refusals()[name]
    with pytest.raises(RuntimeError, match="deform_conv2d") as eager:
        torch.ops.retinaface_ext.deform_conv2d(*args)
    message = str(eager.value).split("(")[0]  # the rest prints dtypes and sizes in C++'s words
    with FakeTensorMode() as mode, pytest.raises(RuntimeError) as traced:
        torch.ops.retinaface_ext.deform_conv2d(*faked(mode, args))
    assert message in str(traced.value)


def test_deform_conv2d_backward():
    good = _refusals()["empty image"]
    good[0] = torch.randn(2, 4, 6, 6)
    short = [torch.zeros(2, 6, 5, 6), *good]  # grad_out one row short
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \[2, 6, 6, 6\]"):
        torch.ops.retinaface_ext.deform_conv2d_backward(*short)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=r"grad_out must have shape \[2, 6, 6, 6\]"):
        torch.ops.retinaface_ext.deform_conv2d_backward(*faked(mode, short))
    empty = [torch.zeros(2, 6, 6, 6), *_refusals()["empty image"]]
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match="input must have a non-empty image"):
        torch.ops.retinaface_ext.deform_conv2d_backward(*faked(mode, empty))


@pytest.mark.parametrize(
    "image, mean, message",
    [
        (torch.zeros(4, 5, 5, dtype=torch.uint8), [0.0] * 5, "image must have 1 to 4 channels"),
        (torch.zeros(4, 5, 3, dtype=torch.int32), [0.0] * 3, "image must be uint8 or float32"),
        (torch.zeros(4, 5, 3, dtype=torch.uint8), [0.0] * 2, "mean must hold one value per channel"),
        (torch.zeros(5, 3, dtype=torch.uint8), [0.0] * 3, "image must have shape"),
    ],
)
def test_image_planes(image, mean, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.retinaface_ext.image_planes(image, mean)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        torch.ops.retinaface_ext.image_planes(*faked(mode, [image, mean]))
