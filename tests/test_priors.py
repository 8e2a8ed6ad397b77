"""prior_boxes: the values and order of Pytorch_Retinaface's PriorBox."""

import pytest
import torch
from seed_reference import prior_box_oracle

from retinaface_ext.priors import cached_prior_boxes, prior_boxes


@pytest.mark.parametrize("size", [(640, 640), (1024, 624), (624, 1024), (1, 1), (37, 101), (840, 840), (481, 353)])
def test_equal_to_prior_box(size):
    ours = prior_boxes(size)
    expected = prior_box_oracle(size)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_counts_and_clip():
    assert prior_boxes((640, 640)).shape == (16800, 4)
    torch.testing.assert_close(
        prior_boxes((37, 101), clip=True), prior_box_oracle((37, 101), clip=True), rtol=0, atol=0
    )
    assert prior_boxes((37, 101), clip=True).max() <= 1


def test_custom_levels_and_cache():
    sizes, steps = ((10, 20), (40,)), (4, 12)
    torch.testing.assert_close(
        prior_boxes((50, 70), sizes, steps), prior_box_oracle((50, 70), sizes, steps), rtol=0, atol=0
    )
    assert cached_prior_boxes((640, 480)) is cached_prior_boxes((640, 480))
    assert prior_boxes((640, 480)) is not prior_boxes((640, 480))  # a copy of the cache, each call
    torch.testing.assert_close(prior_boxes((640, 480)), cached_prior_boxes((640, 480)), rtol=0, atol=0)
    assert prior_boxes((640, 480), dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=(0, 10)), "image_size must be positive"),
        (dict(image_size=(10, 10), steps=(8, 16)), "min_sizes has 3 levels but steps has 2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prior_boxes(**kwargs)


def test_the_cache_survives_inference_mode_and_in_place_edits():
    """The Detector fills the cache inside torch.inference_mode; what callers get must
    still work in autograd, and editing it must not change later results."""
    size = (72, 88)
    expected = prior_box_oracle(size, ((16, 32), (64, 128), (256, 512)), (8, 16, 32))
    with torch.inference_mode():
        cached_prior_boxes(size)  # first made here
        prior_boxes(size).add_(1)
    assert not cached_prior_boxes(size).is_inference()
    priors = prior_boxes(size)
    weight = torch.ones(4, requires_grad=True)
    (priors * weight).sum().backward()  # "Inference tensors cannot be saved for backward" before
    assert weight.grad is not None
    priors.mul_(0)
    torch.testing.assert_close(prior_boxes(size), expected.float(), rtol=0, atol=0)
    torch.testing.assert_close(cached_prior_boxes(size), expected.float(), rtol=0, atol=0)
