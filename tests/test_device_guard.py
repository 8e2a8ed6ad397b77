"""The device guard (tests/device_guard.py) fails, on the CPU, what a GPU would fail: a host
tensor beside the device fixture's tensors. And it lets through what a GPU accepts."""

import numpy as np
import pytest
import torch
from device_guard import DeviceGuard, DeviceMismatch, DeviceName

from retinaface_ext import ops


@pytest.fixture
def guard():
    with DeviceGuard() as active:
        yield active


def test_the_device_fixture_runs_its_cpu_tests_under_the_guard(device):
    if device == "cuda":
        pytest.skip("the guard stands in for a GPU where there is none")
    assert isinstance(device, DeviceName) and device == "cpu" and device == torch.device("cpu")
    with pytest.raises(DeviceMismatch):
        torch.ones(3, device=device) + torch.ones(3)


def test_a_gradient_drawn_on_the_host_for_a_device_output(guard):
    """The harness bug that failed 227 CUDA tests on the first GPU run."""
    x = torch.randn(2, 3).to(guard.device).requires_grad_()
    out = x * 2
    with pytest.raises(DeviceMismatch, match=r"grad takes tensors of the device under test .* shape \(2, 3\)"):
        torch.autograd.grad(out, [x], torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    (grad,) = torch.autograd.grad(out, [x], torch.randn(out.shape).to(out.device))
    assert grad.shape == (2, 3)


def test_host_tensors_beside_device_tensors_fail(guard):
    on_device = torch.zeros(4, device=guard.device)
    for make_host in (
        lambda: torch.ones(4),
        lambda: torch.as_tensor(np.ones(4, np.float32)),
        lambda: on_device.cpu(),
        lambda: on_device.to("cpu"),
    ):
        host = make_host()
        with pytest.raises(DeviceMismatch):
            torch.cat([on_device, host])
        with pytest.raises(RuntimeError) as raised:  # assert_close reports it as its cause
            torch.testing.assert_close(on_device, host * 0)
        assert isinstance(raised.value, DeviceMismatch) or isinstance(raised.value.__cause__, DeviceMismatch)
    with pytest.raises(DeviceMismatch, match="numpy"):
        on_device.numpy()
    with pytest.raises(DeviceMismatch, match="generator"):
        torch.randn(3, generator=torch.Generator().manual_seed(0), device=guard.device)


def test_what_cuda_accepts_passes(guard):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]]).to(guard.device)
    scores = torch.rand(2, device=guard.device)
    kept = ops.nms(boxes, scores, 0.5)  # made inside the library: on the device of its inputs
    assert torch.equal(boxes[kept] * 2, boxes[kept] + boxes[kept])
    assert float(boxes.sum() + torch.tensor(1.0)) == 45.0  # a 0-dim host tensor is a scalar on CUDA too
    boxes[0] = torch.tensor([0.0, 0.0, 5.0, 5.0])  # assignment copies a host value
    boxes.copy_(torch.zeros(2, 4))
    assert boxes[torch.tensor([1])].shape == (1, 4)  # host indices
    assert torch.zeros_like(boxes).new_ones(3).cpu().numpy().tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(scores.cpu(), scores.to("cpu"))


def test_moves_copy_as_a_real_move_does(guard):
    host = torch.zeros(3)
    on_device = host.to(guard.device)
    on_device += 1
    assert host.tolist() == [0.0, 0.0, 0.0]
    back = on_device.cpu()
    back -= 1
    assert on_device.tolist() == [1.0, 1.0, 1.0]
    assert on_device.to(torch.float64).dtype == torch.float64
