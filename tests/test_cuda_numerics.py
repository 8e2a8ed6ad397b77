"""What CUDA results may differ from the CPU's by, and why (the README's "CUDA numerics"):
the Detector on CUDA against the CPU with cuDNN's TF32 convolutions on (PyTorch's default)
and off, each to its stated tolerance."""

import contextlib

import pytest
import torch
from shared_data import CROWD, WEIGHTS

from retinaface_ext import Detections, Detector
from retinaface_ext.ops.reference import box_iou

pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


# What CUDA detections may differ from the CPU's by (the README's "CUDA numerics"): face
# scores, and coordinates as a fraction of the face's longer side. cuDNN convolutions in
# TF32 (PyTorch's default on Ampere and newer) round their inputs to 10 mantissa bits: the
# first H200 run measured scores 2e-3 apart on the crowd photo. In IEEE float32 only the
# order of the sums differs.
CUDA_TOLERANCE = {"tf32": (1e-2, 1e-2), "ieee": (1e-4, 1e-3)}


@contextlib.contextmanager
def cudnn_tf32(allowed: bool):
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allowed, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def assert_same_faces_within(a, b, score_tolerance, size_tolerance, threshold=0.1):
    """Each face scored >= threshold on one side is on the other: score within
    score_tolerance, box and landmarks within size_tolerance of its longer side."""
    for sure, other in ((a, b), (b, a)):
        sure, other = sure.above(threshold), other.above(threshold - 2 * score_tolerance)
        assert len(sure) >= 10
        match = other[box_iou(sure.boxes, other.boxes).argmax(1)]
        size = (sure.boxes[:, 2:] - sure.boxes[:, :2]).max(1).values
        assert float((sure.scores - match.scores).abs().max()) <= score_tolerance
        for name in ("boxes", "landmarks"):
            distance = (getattr(sure, name) - getattr(match, name)).abs().reshape(len(sure), -1).max(1).values
            assert float((distance / size).max()) <= size_tolerance, name


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_cuda_detector_equals_cpu(crowd, precision):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = [crowd, crowd[:300, :400].copy()]
    cpu = Detector(WEIGHTS, device="cpu").detect(images)
    with cudnn_tf32(precision == "tf32"):
        gpu = Detector(WEIGHTS, device="cuda").detect(images)
        assert torch.backends.cudnn.allow_tf32 == (precision == "tf32")  # the Detector leaves the flags alone
    for a, b in zip(cpu, gpu):
        assert_same_faces_within(a, b.to("cpu"), *CUDA_TOLERANCE[precision])


def test_the_cuda_comparison_notices_a_difference(detector, crowd):
    """The comparison above, on two CPU results: equal passes, a nudge past the tolerance fails."""
    faces = detector.detect(crowd)
    score_tolerance, size_tolerance = CUDA_TOLERANCE["ieee"]
    assert_same_faces_within(faces, faces, score_tolerance, size_tolerance)
    nudged = Detections(
        faces.boxes + 3 * size_tolerance * (faces.boxes[:, 2:] - faces.boxes[:, :2]).repeat(1, 2),
        faces.scores,
        faces.landmarks,
        faces.image_size,
    )
    with pytest.raises(AssertionError, match="boxes"):
        assert_same_faces_within(faces, nudged, score_tolerance, size_tolerance)
    rescored = Detections(faces.boxes, faces.scores + 3 * score_tolerance, faces.landmarks, faces.image_size)
    with pytest.raises(AssertionError):
        assert_same_faces_within(faces, rescored, score_tolerance, size_tolerance)
