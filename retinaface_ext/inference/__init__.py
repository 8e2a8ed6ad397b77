"""Images in, faces out: the :class:`Detector` and its parts, each in its own module:
pre-processing (:mod:`.preprocess`), the engines that run the network (:mod:`.engines`:
PyTorch, or onnxruntime through :mod:`.onnx_network`), the post-processing
(:mod:`.postprocess`), the results (:mod:`.detections`) and the levels: scales, flips and
their merging (:mod:`.levels`)."""

from .detections import LANDMARK_NAMES, Detections, Face
from .detector import MAX_PADDING_FACTOR, Detector, padding_groups
from .levels import LevelSettings

__all__ = ["Detector", "Detections", "Face", "LANDMARK_NAMES", "LevelSettings", "MAX_PADDING_FACTOR", "padding_groups"]
