"""Aligned face crops: the similarity transform recovers known transforms, crops put the
landmarks on the ArcFace template, and bad landmarks are named."""

import math

import cv2
import numpy as np
import pytest
import torch
from shared_data import CROWD, HAVE_SHARED, WEIGHTS

from retinaface_ext import Detector
from retinaface_ext.align import ARCFACE_TEMPLATE, align_faces, similarity_transform, template


def apply(transform, points):
    return points @ transform[:, :2].T + transform[:, 2]


def test_landmarks_on_the_template_give_the_identity():
    transform = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(transform, np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-12)


@pytest.mark.parametrize(
    "angle, scale, shift", [(30, 2.5, (310.0, -42.0)), (-100, 0.4, (5.0, 7.5)), (179, 1.0, (0.0, 0.0))]
)
def test_a_rotated_scaled_shifted_template_is_recovered(angle, scale, shift):
    a = math.radians(angle)
    forward = np.array(
        [[scale * math.cos(a), -scale * math.sin(a), shift[0]], [scale * math.sin(a), scale * math.cos(a), shift[1]]]
    )
    landmarks = apply(forward, ARCFACE_TEMPLATE)  # a face that is the template moved
    transform = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(apply(transform, landmarks), ARCFACE_TEMPLATE, atol=1e-4)
    inverse = cv2.invertAffineTransform(forward)
    np.testing.assert_allclose(transform, inverse, atol=1e-4)


def test_least_squares_and_no_mirror():
    """Noisy landmarks: the transform is the least-squares one (no other similarity does
    better), and mirrored landmarks are not un-mirrored by a reflection."""
    rng = np.random.default_rng(0)
    landmarks = ARCFACE_TEMPLATE * 1.7 + 40 + rng.normal(0, 1.5, (5, 2))
    transform = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    best = ((apply(transform, landmarks) - ARCFACE_TEMPLATE) ** 2).sum()
    for _ in range(200):
        nudged = transform.copy()
        a, s = rng.normal(0, 0.01), 1 + rng.normal(0, 0.01)
        rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
        nudged[:, :2] = rotation @ nudged[:, :2]
        nudged[:, 2] += rng.normal(0, 0.1, 2)
        assert ((apply(nudged, landmarks) - ARCFACE_TEMPLATE) ** 2).sum() >= best
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    assert np.linalg.det(similarity_transform(mirrored, ARCFACE_TEMPLATE)[:, :2]) > 0


def test_crops_of_a_drawn_face_put_its_points_on_the_template():
    image = np.zeros((300, 400, 3), np.uint8)
    forward = np.array([[0.0, -2.0, 250.0], [2.0, 0.0, 20.0]])  # rotated by 90 degrees, twice as large
    landmarks = apply(forward, ARCFACE_TEMPLATE)
    for k, (x, y) in enumerate(landmarks):
        cv2.circle(image, (int(round(x)), int(round(y))), 3, (0, 50 * (k + 1), 255), -1)
    for size in (112, 224):
        crops, transforms = align_faces(image, torch.tensor(landmarks)[None], size=size)
        assert crops.shape == (1, size, size, 3) and crops.dtype == np.uint8 and transforms.shape == (1, 2, 3)
        for k, (x, y) in enumerate(template(size)):
            pixel = crops[0, int(round(y)), int(round(x))]
            assert pixel[2] == 255 and abs(int(pixel[1]) - 50 * (k + 1)) <= 2, (size, k, pixel)


def test_shapes_and_bad_landmarks_are_named():
    image = np.zeros((50, 60), np.uint8)
    assert align_faces(image, np.zeros((0, 5, 2))).crops.shape == (0, 112, 112)
    assert align_faces(image, ARCFACE_TEMPLATE.reshape(10)).crops.shape == (1, 112, 112)
    with pytest.raises(ValueError, match=r"landmarks must be \[K, 5, 2\]"):
        align_faces(image, np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="face 1: its landmarks coincide or are not finite"):
        align_faces(image, np.stack([ARCFACE_TEMPLATE, np.full((5, 2), 3.0)]))
    with pytest.raises(ValueError, match="face 0"):
        align_faces(image, np.full((1, 5, 2), np.nan))
    with pytest.raises(ValueError, match="size must be a whole number"):
        align_faces(image, ARCFACE_TEMPLATE, size=0)
    with pytest.raises(ValueError, match="image must be a non-empty"):
        align_faces(np.zeros((0, 5, 3), np.uint8), ARCFACE_TEMPLATE)


@pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")
def test_crops_of_the_crowd_photo_put_the_eyes_on_the_template_row():
    """The detector's own landmarks, aligned: in every confident face's crop the eyes lie
    on the template's eye row within a few pixels, both where the transform maps the
    landmarks and where the detector finds them again in the crop (20-60 px faces,
    upscaled: a noisier second look)."""
    image = cv2.imread(str(CROWD))
    detector = Detector(WEIGHTS, device="cpu")
    faces = detector.detect(image).above(0.9)
    assert len(faces) >= 15
    crops, transforms = align_faces(image, faces)
    assert crops.shape == (len(faces), 112, 112, 3)
    eye_row = ARCFACE_TEMPLATE[:2, 1].mean()
    for transform, landmarks in zip(transforms, faces.landmarks.numpy()):
        eyes = apply(transform, landmarks[:2])
        assert np.abs(eyes[:, 1] - eye_row).max() <= 4.0
        assert eyes[0, 0] < eyes[1, 0]  # left eye on the left
    errors = []
    for crop in crops:  # the crops' content: the detector run again on each, upscaled 4x
        again = detector.detect(cv2.resize(crop, (448, 448))).above(0.5)
        if len(again):
            errors.append(np.abs(again.landmarks[0, :2].numpy()[:, 1] / 4 - eye_row).max())
    assert len(errors) >= 0.8 * len(crops)
    assert np.median(errors) <= 4.0 and np.mean(np.array(errors) <= 6.0) >= 0.75


@pytest.mark.skipif(not HAVE_SHARED, reason="../shared missing")
def test_the_detect_command_writes_one_crop_per_face(tmp_path, capsys):
    from cli_run import run_cli

    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    image = cv2.imread(str(CROWD))
    cv2.imwrite(str(photos / "a" / "crowd.png"), image[:300, :500])
    cv2.imwrite(str(photos / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    code, out, _ = run_cli(
        capsys,
        "detect",
        photos,
        "--weights",
        WEIGHTS,
        "--recursive",
        "--align",
        tmp_path / "crops",
        "--threshold",
        "0.9",
    )
    assert code == 0
    faces = int(out.split("crowd.png: ")[1].split(" faces")[0])
    crops = sorted((tmp_path / "crops" / "a").glob("crowd_face*.png"))
    assert faces > 3 and len(crops) == faces and not list((tmp_path / "crops").glob("blank*"))
    assert cv2.imread(str(crops[0])).shape == (112, 112, 3)
    # crops named like an input there would overwrite it: refused before anything is written
    cv2.imwrite(str(photos / "a" / "crowd_face0.png"), image[:50, :50])
    code, _, error = run_cli(capsys, "detect", photos / "a", "--weights", WEIGHTS, "--align", photos / "a")
    assert code == 2 and "would overwrite the input" in error
    assert sorted(p.name for p in (photos / "a").iterdir()) == ["crowd.png", "crowd_face0.png"]
