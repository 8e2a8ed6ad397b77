"""The training augmentation, checked by coordinates, against an oracle of the reference
(tests/augment_oracle.py) with the reference's own draws, and pixel by pixel."""

import random

import cv2
import numpy as np
import pytest
import torch
from augment_oracle import reference_crop_draw, reference_distort, reference_geometry

from retinaface_ext.data.transforms import (
    INTERPOLATIONS,
    MEAN_BGR,
    Distortion,
    Draws,
    TrainTransform,
    crop_faces,
    distort,
    draw_crop,
    mirror_faces,
)


def random_faces(rng, height, width, count, unlabelled=0.3):
    """[count, 15] faces with landmarks inside their boxes; some labelled -1 (landmarks -1)."""
    sides = rng.uniform(8, min(height, width) / 3, (count, 1)) * np.array([[0.8, 1.0]])
    corners = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - sides)
    boxes = np.concatenate([corners, corners + sides], 1)
    points = corners[:, None, :] + rng.uniform(0.1, 0.9, (count, 5, 2)) * sides[:, None, :]
    points[:, 0, 0], points[:, 1, 0] = corners[:, 0] + 0.3 * sides[:, 0], corners[:, 0] + 0.7 * sides[:, 0]
    labels = np.where(rng.random(count) < unlabelled, -1.0, 1.0)
    points[labels < 0] = -1
    return np.concatenate([boxes, points.reshape(count, 10), labels[:, None]], 1).astype(np.float32)


def no_distortion(transform, image, target, crop, mirror, interpolation=cv2.INTER_LINEAR):
    return transform.apply(image, target, Draws(crop, None, mirror, interpolation))


@pytest.mark.parametrize("seed", range(30))
def test_crop_mirror_and_scale_equal_the_reference_with_its_draws(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(100, 700)), int(rng.integers(100, 700))
    target = random_faces(rng, height, width, int(rng.integers(1, 15)))
    rnd = random.Random(seed)
    roi = reference_crop_draw(rnd, height, width, target[:, :4].astype(np.float64))
    mirror = bool(rnd.randrange(2))
    image = np.zeros((height, width, 3), np.uint8)
    transform = TrainTransform(image_size=320)
    out_image, out = no_distortion(transform, image, target, roi, mirror)
    boxes, landmarks = reference_geometry(height, width, target, roi, mirror)
    assert out_image.shape == (3, 320, 320) and out_image.dtype == torch.float32
    assert out.shape == (len(boxes), 15)
    np.testing.assert_allclose(out[:, :4].numpy(), boxes, atol=1e-5)
    labelled = out[:, 14].numpy() > 0
    np.testing.assert_allclose(out[labelled, 4:14].numpy(), landmarks[labelled], atol=1e-5)
    assert (out[~labelled, 4:14] == -1).all()  # where we differ: no landmarks stay -1


def test_the_crop_search_keeps_squares_that_wholly_contain_a_face():
    rng = np.random.default_rng(1)
    for _ in range(200):
        height, width = int(rng.integers(50, 900)), int(rng.integers(50, 900))
        target = random_faces(rng, height, width, int(rng.integers(1, 6)))
        crop = draw_crop(rng, height, width, target[:, :4])
        assert crop is not None
        left, top, right, bottom = crop
        side = right - left
        assert bottom - top == side and side in {
            max(1, int(s * min(height, width))) for s in (0.3, 0.45, 0.6, 0.8, 1.0)
        }
        assert 0 <= left and right <= width and 0 <= top and bottom <= height
        inside = (target[:, 0] >= left) & (target[:, 1] >= top) & (target[:, 2] <= right) & (target[:, 3] <= bottom)
        assert inside.any()
    assert draw_crop(rng, 100, 100, np.array([[0, 0, 100, 100.5]]), tries=20) is None  # no square can hold it


def test_kept_faces_are_the_originals_mapped_through_crop_and_scale():
    rng = np.random.default_rng(2)
    height, width = 480, 640
    target = random_faces(rng, height, width, 40, unlabelled=0)
    crop = (100, 50, 388, 338)
    _, out = no_distortion(TrainTransform(image_size=256), np.zeros((height, width, 3), np.uint8), target, crop, False)
    centres = (target[:, :2] + target[:, 2:4]) / 2
    keep = (centres[:, 0] > 100) & (centres[:, 0] < 388) & (centres[:, 1] > 50) & (centres[:, 1] < 338)
    assert 0 < keep.sum() < 40 and len(out) == keep.sum()
    expected = (np.clip(target[keep, :4], [100, 50, 100, 50], [388, 338, 388, 338]) - [100, 50, 100, 50]) / 288
    np.testing.assert_allclose(out[:, :4].numpy(), expected, atol=1e-6)
    out_centres = (out[:, :2] + out[:, 2:4]) / 2
    assert ((out_centres > 0) & (out_centres < 1)).all()  # no kept face has its centre outside
    assert ((out[:, 4:14] >= 0) & (out[:, 4:14] <= 1)).all()  # landmarks clamped to the crop


def test_mirroring_twice_is_the_identity_and_swaps_left_and_right():
    rng = np.random.default_rng(3)
    faces = random_faces(rng, 300, 300, 30)
    faces[:, :4] /= 300
    faces[faces[:, 14] > 0, 4:14] /= 300
    once = mirror_faces(faces)
    np.testing.assert_allclose(mirror_faces(once), faces, atol=1e-6)
    labelled = faces[:, 14] > 0
    for old, new in [(0, 1), (1, 0), (3, 4), (4, 3), (2, 2)]:  # left eye <- mirrored right eye, ...
        np.testing.assert_allclose(once[labelled, 4 + 2 * new], 1 - faces[labelled, 4 + 2 * old], atol=1e-6)
        np.testing.assert_allclose(once[labelled, 5 + 2 * new], faces[labelled, 5 + 2 * old])
    np.testing.assert_array_equal(once[~labelled, 4:14], -1)
    assert (once[:, 2] > once[:, 0]).all()


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("crop", [(40, 30, 340, 330), None])
def test_landmarks_follow_the_pixels(mirror, crop):
    """A bright dot at each face's left eye ends up where the transformed target puts
    that point (the right eye after a mirror, as seen in the image)."""
    image = np.zeros((360, 400, 3), np.uint8)
    target = np.array([[100, 100, 200, 220, 130, 140, 170, 140, 150, 170, 135, 200, 165, 200, 1]], np.float32)
    image[138:143, 128:133] = 255  # centred on the left eye (130, 140)
    out_image, out = no_distortion(TrainTransform(image_size=200), image, target, crop, mirror, cv2.INTER_NEAREST)
    brightness = out_image.sum(0) + torch.tensor(MEAN_BGR).sum()
    y, x = divmod(int(brightness.argmax()), 200)
    eye = 1 if mirror else 0
    expected = out[0, 4 + 2 * eye : 6 + 2 * eye].numpy() * 200
    assert abs(x + 0.5 - expected[0]) <= 2.5 and abs(y + 0.5 - expected[1]) <= 2.5, ((x, y), expected)


def test_pixels_are_the_crop_resized_minus_the_mean():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    target = random_faces(rng, 300, 500, 3)
    for interpolation in INTERPOLATIONS:
        out, _ = no_distortion(TrainTransform(image_size=128), image, target, (10, 20, 250, 260), False, interpolation)
        expected = cv2.resize(image[20:260, 10:250], (128, 128), interpolation=interpolation).astype(np.float32)
        np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected - np.float32(MEAN_BGR))
    padded, _ = no_distortion(TrainTransform(image_size=500), image, target, None, False, cv2.INTER_NEAREST)
    assert (padded[:, 300:, :] == 0).all()  # padded with the mean, below the image
    np.testing.assert_array_equal(padded[:, :300].permute(1, 2, 0).numpy(), image - np.float32(MEAN_BGR))
    mirrored, _ = no_distortion(TrainTransform(image_size=128), image, target, (10, 20, 250, 260), True)
    plain, _ = no_distortion(TrainTransform(image_size=128), image, target, (10, 20, 250, 260), False)
    np.testing.assert_array_equal(mirrored, plain.flip(-1))


@pytest.mark.parametrize("contrast_first", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_the_distortion_gives_the_references_values(contrast_first, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    params = Distortion(
        contrast_first,
        float(rng.uniform(-32, 32)),
        float(rng.uniform(0.5, 1.5)),
        float(rng.uniform(0.5, 1.5)) if seed % 3 else None,
        int(rng.integers(-18, 19)) if seed % 2 else 7,
    )
    before = image.copy()
    np.testing.assert_array_equal(distort(image, params), reference_distort(image, *params))
    np.testing.assert_array_equal(image, before)  # the input is untouched
    # Without saturation and hue only brightness and contrast apply (no HSV round trip).
    plain = distort(image, Distortion(contrast_first, 10.0, 1.2))
    np.testing.assert_array_equal(
        plain, np.clip(np.clip(image + 10.0, 0, 255).astype(np.uint8) * 1.2, 0, 255).astype(np.uint8)
    )


def test_the_same_seed_gives_the_same_output_and_another_differs():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    target = random_faces(rng, 240, 320, 6)
    runs = [[TrainTransform(image_size=96, seed=s)(image, target) for _ in range(3)] for s in (7, 7, 8)]
    for (a_image, a_target), (b_image, b_target) in zip(runs[0], runs[1]):
        assert torch.equal(a_image, b_image) and torch.equal(a_target, b_target)
    assert any(not torch.equal(a[0], c[0]) for a, c in zip(runs[0], runs[2]))
    transform = TrainTransform(image_size=96, seed=7)
    first = transform(image, target)
    transform.reseed(7)
    assert torch.equal(transform(image, target)[0], first[0])


def test_an_image_without_faces_passes_through():
    image = np.full((90, 120, 3), 200, np.uint8)
    for seed in range(10):
        out_image, out = TrainTransform(image_size=64, seed=seed)(image, np.zeros((0, 15), np.float32))
        assert out_image.shape == (3, 64, 64) and out.shape == (0, 15)
    out_image, out = TrainTransform(image_size=64, seed=0)(image, torch.zeros(0, 15))
    assert out.shape == (0, 15)


def test_the_original_target_is_not_changed_and_bad_input_is_named():
    rng = np.random.default_rng(6)
    target = random_faces(rng, 100, 100, 4)
    kept = target.copy()
    transform = TrainTransform(image_size=32, seed=0)
    for _ in range(5):
        transform(np.zeros((100, 100, 3), np.uint8), target)
    np.testing.assert_array_equal(target, kept)
    with pytest.raises(ValueError, match="target must be"):
        transform(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 14), np.float32))
    with pytest.raises(ValueError, match="image must be"):
        transform(np.zeros((10, 10), np.uint8), target)
    with pytest.raises(ValueError, match="image_size"):
        TrainTransform(image_size=0)
    with pytest.raises(ValueError, match="crop_scales"):
        TrainTransform(crop_scales=(0.5, 1.5))


def test_crop_faces_returns_a_view_of_the_crop():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    target = np.array([[5, 5, 15, 15] + [8] * 10 + [1]], np.float32)
    crop, faces = crop_faces(image, target, (4, 2, 16, 14))
    assert np.shares_memory(crop, image) and crop.shape == (12, 12, 3)
    np.testing.assert_array_equal(faces[0, :4], [1, 3, 11, 12])  # clipped at the bottom
    np.testing.assert_array_equal(faces[0, 4:14], [4, 6] * 5)


def test_uint8_output_normalised_later_equals_the_float_output():
    from retinaface_ext.data import collate

    rng = np.random.default_rng(8)
    image = rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)
    target = random_faces(rng, 200, 260, 5)
    floats = [TrainTransform(image_size=64, seed=s)(image, target) for s in range(3)]
    raw = [TrainTransform(image_size=64, seed=s, subtract_mean=False)(image, target) for s in range(3)]
    assert raw[0][0].dtype == torch.uint8 and raw[0][0].is_contiguous()
    batch = collate(raw)
    assert batch.images.dtype == torch.uint8
    torch.testing.assert_close(batch.normalized().images, collate(floats).images, rtol=0, atol=0)
    channels_last = batch.normalized(memory_format=torch.channels_last).images
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last, collate(floats).images, rtol=0, atol=0)
