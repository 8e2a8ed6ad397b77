"""image_planes: kernel = reference, for every layout the Detector hands it; errors."""

import numpy as np
import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.ops import reference

MEAN = (104.0, 117.0, 123.0)


def pixels(shape, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return values if dtype == torch.uint8 else values.to(dtype) + torch.rand(shape, generator=g) - 0.5


def same_as_reference(image, mean=MEAN):
    planes = ops.image_planes(image, mean)
    expected = reference.image_planes(image.cpu(), mean)
    assert planes.dtype == torch.float32 and planes.is_contiguous() and planes.device == image.device
    torch.testing.assert_close(planes.cpu(), expected, rtol=0, atol=0)
    return planes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
# Rows of 64 pixels and more take the streaming stores on AVX-512 machines, narrower ones not.
@pytest.mark.parametrize("shape", [(624, 1024, 3), (3, 67, 3), (2, 4, 130, 3), (1, 1, 3), (7, 33, 3), (2, 5, 9, 3)])
def test_three_channels(device, dtype, shape):
    same_as_reference(pixels(shape, dtype, seed=sum(shape)).to(device))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_other_channel_counts(device, channels):
    mean = tuple(float(10 * c + 1) for c in range(channels))
    same_as_reference(pixels((2, 6, 11, channels), seed=channels).to(device), mean)


def test_values_and_layout():
    image = torch.tensor([[[0, 100, 255], [1, 2, 3]]], dtype=torch.uint8)  # [H=1, W=2, C=3]
    planes = ops.image_planes(image, (1.0, 2.0, 3.5))
    assert planes.shape == (3, 1, 2)
    assert planes.tolist() == [[[-1.0, 0.0]], [[98.0, 0.0]], [[251.5, -0.5]]]


def test_views_of_other_memory(device):
    """Crops and channel-reordered views (a numpy BGR array seen as RGB) are read as they look."""
    image = pixels((40, 50, 3), seed=2).to(device)
    same_as_reference(image[5:30:2, 3:47])
    same_as_reference(image.flip(-1))
    same_as_reference(image.permute(2, 0, 1).contiguous().permute(1, 2, 0))  # planar memory
    if device == "cpu":
        array = np.ascontiguousarray(image.cpu().numpy()[:, ::-1])
        same_as_reference(torch.from_numpy(array))


def test_empty_images_give_empty_planes(device):
    for shape in [(0, 5, 3), (4, 0, 3), (0, 2, 2, 3)]:
        planes = same_as_reference(torch.zeros(shape, dtype=torch.uint8, device=device))
        assert planes.numel() == 0


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
def test_opcheck_and_gradient(device):
    image = pixels((3, 4, 3), seed=3).to(device)
    torch.library.opcheck(torch.ops.retinaface_ext.image_planes.default, (image, list(MEAN)))
    floats = pixels((2, 3, 4, 3), torch.float32, seed=4).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.retinaface_ext.image_planes.default, (floats, list(MEAN)))
    torch.autograd.gradcheck(lambda x: ops.image_planes(x, MEAN), (floats,), eps=1e-2, atol=1e-3, rtol=1e-3)


def test_works_under_torch_compile():
    @torch.compile(backend="eager", fullgraph=True)
    def prepare(image):
        return ops.image_planes(image, MEAN) / 2

    image = pixels((6, 8, 3), seed=5)
    torch.testing.assert_close(prepare(image), reference.image_planes(image, MEAN) / 2)


@pytest.mark.parametrize(
    "image, mean, message",
    [
        (torch.zeros(4, 3, dtype=torch.uint8), MEAN, r"image must have shape \[H, W, C\] or \[B, H, W, C\]"),
        (torch.zeros(2, 2, 3, dtype=torch.float64), MEAN, "image must be uint8 or float32, got Double"),
        (torch.zeros(2, 2, 5, dtype=torch.uint8), MEAN, "image must have 1 to 4 channels"),
        (torch.zeros(2, 2, 3, dtype=torch.uint8), (1.0, 2.0), r"mean must hold one value per channel \(3\), got 2"),
    ],
)
def test_bad_input_names_the_argument(image, mean, message):
    with pytest.raises(RuntimeError, match=message):
        ops.image_planes(image, mean)


def test_not_a_tensor_is_named():
    with pytest.raises(TypeError, match="image_planes: image must be a torch.Tensor, got ndarray"):
        ops.image_planes(np.zeros((2, 2, 3), np.uint8), MEAN)
