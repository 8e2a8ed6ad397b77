"""The built-in synthetic face set: repeatable, geometrically sound, read back exactly."""

import filecmp
import json
import os
import pathlib

import numpy as np
import pytest

from retinaface_ext.data import WiderFaceDataset, read_annotations
from retinaface_ext.data.synthetic import draw_image, make_synthetic_faces

SIZE = 192


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_faces(
        tmp_path_factory.mktemp("synthetic") / "set", num_train=24, num_val=6, seed=3, image_size=SIZE
    )


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_the_layout_is_label_txt_and_images(synthetic):
    for labels, count in ((synthetic.train_labels, 24), (synthetic.val_labels, 6)):
        dataset = WiderFaceDataset(labels)
        dataset.check()
        assert len(dataset) == count and dataset.annotations.format == "retinaface"
        image, target = dataset[0]
        assert image.dtype == np.uint8 and max(image.shape[:2]) == SIZE
    with open(os.path.join(synthetic.root, "synthetic.json")) as handle:
        assert json.load(handle)["complete"] is True


def test_two_runs_with_one_seed_are_byte_identical_and_another_seed_differs(synthetic, tmp_path):
    again = make_synthetic_faces(tmp_path / "again", num_train=24, num_val=6, seed=3, image_size=SIZE, workers=2)
    files = all_files(synthetic.root)
    assert files == all_files(again.root) and len(files) == 24 + 6 + 3
    match, mismatch, errors = filecmp.cmpfiles(synthetic.root, again.root, files, shallow=False)
    assert mismatch == [] and errors == []
    other = make_synthetic_faces(tmp_path / "other", num_train=24, num_val=6, seed=4, image_size=SIZE)
    _, mismatch, _ = filecmp.cmpfiles(
        synthetic.root, other.root, [f for f in files if f.endswith(".jpg")], shallow=False
    )
    assert len(mismatch) == 30


def test_the_parser_reads_back_exactly_what_was_drawn(synthetic):
    annotations = read_annotations(synthetic.train_labels)
    for index in range(24):
        _, faces = draw_image(3, "train", index, SIZE)
        np.testing.assert_array_equal(annotations.faces(index), faces.astype(np.float32))


def test_faces_are_sound(tmp_path):
    """Over many images: boxes inside the image, landmarks inside their box, eyes above
    the mouth, the left eye on the image's left; labels -1 present, and empty images."""
    counts = {"faces": 0, "unlabelled": 0, "empty": 0}
    sizes = []
    for index in range(120):
        image, faces = draw_image(0, "train", index, 320)
        height, width = image.shape[:2]
        counts["faces"] += len(faces)
        counts["empty"] += len(faces) == 0
        if len(faces) == 0:
            continue
        assert (faces[:, 0] >= 0).all() and (faces[:, 1] >= 0).all()
        assert (faces[:, 2] <= width).all() and (faces[:, 3] <= height).all()
        assert (faces[:, 2] - faces[:, 0] > 3).all() and (faces[:, 3] - faces[:, 1] >= 9).all()
        sizes.extend(faces[:, 3] - faces[:, 1])
        labelled = faces[faces[:, 14] > 0]
        counts["unlabelled"] += int((faces[:, 14] < 0).sum())
        assert (faces[faces[:, 14] < 0, 4:14] == -1).all()
        points = labelled[:, 4:14].reshape(-1, 5, 2)
        margin = 2.0
        assert (points[..., 0] >= labelled[:, None, 0] - margin).all() and (
            points[..., 0] <= labelled[:, None, 2] + margin
        ).all()
        assert (points[..., 1] >= labelled[:, None, 1] - margin).all() and (
            points[..., 1] <= labelled[:, None, 3] + margin
        ).all()
        assert (points[:, 0, 0] < points[:, 1, 0]).all()  # left eye on the image's left
        assert (points[:, 3, 0] < points[:, 4, 0]).all()  # and the left mouth corner
        eyes_y = points[:, :2, 1].max(1)
        mouth_y = points[:, 3:, 1].min(1)
        assert (eyes_y < mouth_y).all()
    assert counts["empty"] >= 1 and counts["unlabelled"] >= 10 and counts["faces"] > 500
    assert min(sizes) < 14 and max(sizes) > 150


def test_an_existing_folder_is_reused_or_refused_never_overwritten(synthetic, tmp_path):
    before = os.path.getmtime(synthetic.train_labels)
    assert make_synthetic_faces(synthetic.root, num_train=24, num_val=6, seed=3, image_size=SIZE) == synthetic
    assert os.path.getmtime(synthetic.train_labels) == before
    with pytest.raises(FileExistsError, match="other settings"):
        make_synthetic_faces(synthetic.root, num_train=25, num_val=6, seed=3, image_size=SIZE)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_faces(user, num_train=2, num_val=1, image_size=64)
    assert (user / "notes.txt").read_text() == "mine" and os.listdir(user) == ["notes.txt"]


def test_an_interrupted_set_is_finished_on_the_next_call(tmp_path):
    made = make_synthetic_faces(tmp_path / "s", num_train=3, num_val=1, seed=0, image_size=64)
    manifest = os.path.join(made.root, "synthetic.json")
    with open(manifest) as handle:
        recorded = json.load(handle)
    with open(manifest, "w") as handle:
        json.dump({**recorded, "complete": False}, handle)
    os.remove(made.train_labels)
    make_synthetic_faces(tmp_path / "s", num_train=3, num_val=1, seed=0, image_size=64)
    assert os.path.isfile(made.train_labels) and len(WiderFaceDataset(made.train_labels)) == 3


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_faces(tmp_path / "a", num_train=1, num_val=1, image_size=8)
    with pytest.raises(ValueError, match="num_train"):
        make_synthetic_faces(tmp_path / "b", num_train=0, num_val=1)


WEIGHTS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet0.25_Final.pth"


@pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights missing")
def test_the_published_detector_sees_our_faces_and_agrees_on_the_landmarks():
    """The Pytorch_Retinaface MobileNet-0.25 checkpoint, trained on WIDER FACE only, finds
    many drawn faces of 40 px and more, and puts its five points where ours are, in the
    same order: the landmarks mean what WIDER's mean (left and right as seen)."""
    import torch

    from retinaface_ext import Detector
    from retinaface_ext.ops import box_iou

    detector = Detector(WEIGHTS, device="cpu")
    found = total = 0
    errors, swapped = [], []
    for index in range(20):
        image, faces = draw_image(0, "train", index, 640)
        faces = faces[(faces[:, 3] - faces[:, 1] >= 40) & (faces[:, 14] > 0)]
        if len(faces) == 0:
            continue
        detections = detector.detect(image).above(0.5)
        total += len(faces)
        if len(detections.boxes) == 0:
            continue
        best, which = box_iou(torch.tensor(faces[:, :4]), detections.boxes).max(1)
        for face, overlap, k in zip(faces, best.tolist(), which.tolist()):
            if overlap < 0.4:
                continue
            found += 1
            ours = face[4:14].reshape(5, 2)
            theirs = detections.landmarks[k].numpy()
            height = face[3] - face[1]
            errors.append(np.linalg.norm(ours - theirs, axis=1) / height)
            swapped.append(np.linalg.norm(ours[[1, 0, 2, 4, 3]] - theirs, axis=1) / height)
    assert found >= 0.3 * total and found >= 10, (found, total)
    median = np.median(errors, axis=0)
    assert (median < 0.1).all(), median
    assert (np.median(swapped, axis=0)[[0, 1, 3, 4]] > 3 * median[[0, 1, 3, 4]]).all()
