"""Fixtures of the tests that read ../shared: the crowd photo and a CPU Detector of the
published MobileNet-0.25 checkpoint (read-only; one of each for the whole session)."""

import cv2
import pytest
from shared_data import CROWD, WEIGHTS


@pytest.fixture(scope="session")
def crowd():
    """The WIDER FACE crowd photo, BGR, as OpenCV reads it."""
    if not CROWD.exists():
        pytest.skip("../shared missing")
    return cv2.imread(str(CROWD))


@pytest.fixture(scope="session")
def detector():
    """Detector(WEIGHTS, device="cpu"), shared: tests must not change it."""
    from retinaface_ext import Detector

    if not WEIGHTS.exists():
        pytest.skip("../shared missing")
    return Detector(WEIGHTS, device="cpu")
