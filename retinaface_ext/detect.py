"""The Detector's former home: :mod:`retinaface_ext.inference` holds it now; the names stay
importable from here."""

from .devices import resolve_device  # noqa: F401
from .inference import LANDMARK_NAMES, MAX_PADDING_FACTOR, Detections, Detector, Face, padding_groups  # noqa: F401
