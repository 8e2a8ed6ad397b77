"""The files in ../shared that the tests read, and how detections are held to the
expected output of the Pytorch_Retinaface pipeline."""

import json
import pathlib

import numpy as np
import torch

from retinaface_ext.ops import box_iou

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
EXPECTED = SHARED / "expected" / "widerface_crowd.mobilenet0.25.json"
HAVE_SHARED = WEIGHTS.exists() and CROWD.exists() and EXPECTED.exists()


def expected_detections() -> np.ndarray:
    """``[N, 15]`` float64: x1, y1, x2, y2, score, five landmark (x, y) pairs."""
    return np.array(json.loads(EXPECTED.read_text())["detections"], dtype=np.float64)


def match_one_to_one(expected, ours, min_score=0.1):
    """Pairs (expected row, our index) by best IoU for every expected detection with score
    >= min_score; asserts the pairing is one to one and that ours has nothing else there."""
    expected = expected[expected[:, 4] >= min_score]
    mine = ours.scores >= min_score
    iou = box_iou(torch.as_tensor(expected[:, :4], dtype=torch.float64), ours.boxes.double())
    best = iou.argmax(1)
    assert len(set(best.tolist())) == len(best), "two expected detections matched one of ours"
    assert int(mine.sum()) == len(expected), f"{int(mine.sum())} of ours >= {min_score}, {len(expected)} expected"
    assert bool(mine[best].all())
    return expected, best, iou.max(1).values


def assert_reproduces_the_pipeline(faces):
    """``faces`` (Detections on the crowd photo) are the expected output: 48 faces with
    score >= 0.1, the same boxes (IoU >= 0.99), scores (1e-3) and landmarks (1 px)."""
    expected, best, iou = match_one_to_one(expected_detections(), faces)
    assert len(expected) == 48
    assert float(iou.min()) >= 0.99
    np.testing.assert_allclose(faces.scores[best].numpy(), expected[:, 4], atol=1e-3)
    landmarks = faces.landmarks[best].reshape(-1, 10).numpy()
    assert np.abs(landmarks - expected[:, 5:]).max() <= 1.0
