"""The two published RetinaFace configurations, and how detections are read from a
network's outputs: the detection contract, in one place."""

import math
import numbers
from dataclasses import dataclass
from typing import Tuple

#: Pytorch_Retinaface's input: BGR pixels minus this mean (the published weights expect it).
MEAN_BGR = (104.0, 117.0, 123.0)


def whole_number(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int when it is a whole number (not a bool, a float or a string)
    of at least ``minimum``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class DetectionSettings:
    """How faces are read from a network's outputs, with Pytorch_Retinaface's defaults
    (its detect.py): a face score above ``score_threshold`` makes a prior a candidate,
    the ``top_k`` best candidates of an image go through NMS at ``nms_threshold``, and
    ``keep_top_k`` detections are kept. The Detector, the command line, the training's
    validation and the exported detection graph all take these."""

    score_threshold: float = 0.02
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750

    def __post_init__(self):
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or math.isnan(value)
                or not 0.0 <= float(value) <= 1.0
            ):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("top_k", "keep_top_k"):
            object.__setattr__(self, name, whole_number(getattr(self, name), name))

    def op_arguments(self) -> Tuple[float, int, float, int]:
        """The settings in ``detect_faces``' order: score_threshold, top_k, nms_threshold, keep_top_k."""
        return self.score_threshold, self.top_k, self.nms_threshold, self.keep_top_k


@dataclass(frozen=True)
class RetinaFaceConfig:
    """Everything that ties a RetinaFace network to its priors and its training recipe.

    ``in_channels`` are the channels of the three backbone feature maps that feed the
    FPN (strides 8, 16, 32); ``out_channels`` is the width of the FPN, SSH and heads.
    """

    backbone: str
    in_channels: Tuple[int, int, int]
    out_channels: int
    min_sizes: Tuple[Tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
    steps: Tuple[int, ...] = (8, 16, 32)
    variances: Tuple[float, float] = (0.1, 0.2)
    mean_bgr: Tuple[float, float, float] = MEAN_BGR
    clip: bool = False
    anchors_per_location: int = 2
    image_size: int = 640  # square training crop
    loc_weight: float = 2.0
    batch_size: int = 32
    epochs: int = 250
    decay_epochs: Tuple[int, int] = (190, 220)

    def __post_init__(self):
        def bad(message):
            raise ValueError(f"RetinaFaceConfig({self.backbone!r}): {message}")

        if len(self.in_channels) != 3 or any(c <= 0 for c in self.in_channels):
            bad(f"in_channels must be three positive channel counts, got {self.in_channels}")
        if self.out_channels <= 0 or self.out_channels % 4:
            bad(
                f"out_channels must be a positive multiple of 4 (the SSH splits it in quarters), "
                f"got {self.out_channels}"
            )
        if len(self.steps) != 3 or len(self.min_sizes) != len(self.steps):
            bad(f"min_sizes and steps must describe the 3 FPN levels, got {len(self.min_sizes)} and {len(self.steps)}")
        if any(step <= 0 for step in self.steps) or any(size <= 0 for level in self.min_sizes for size in level):
            bad(f"steps and min_sizes must be positive, got {self.steps} and {self.min_sizes}")
        if any(len(level) != self.anchors_per_location for level in self.min_sizes):
            bad(f"every level needs anchors_per_location ({self.anchors_per_location}) min sizes, got {self.min_sizes}")
        if len(self.variances) != 2 or not all(v > 0 for v in self.variances):
            bad(f"variances must be two positive numbers, got {self.variances}")


MOBILENET_025 = RetinaFaceConfig(
    backbone="mobilenet0.25",
    in_channels=(64, 128, 256),
    out_channels=64,
    image_size=640,
    batch_size=32,
    epochs=250,
    decay_epochs=(190, 220),
)
RESNET50 = RetinaFaceConfig(
    backbone="resnet50",
    in_channels=(512, 1024, 2048),
    out_channels=256,
    image_size=840,
    batch_size=24,
    epochs=100,
    decay_epochs=(70, 90),
)

PRESETS = {"mobilenet0.25": MOBILENET_025, "resnet50": RESNET50}


def config_for(backbone: str) -> RetinaFaceConfig:
    """The preset of a backbone name: ``"mobilenet0.25"`` or ``"resnet50"``."""
    key = backbone.lower().replace("-", "").replace("_", "")
    aliases = {
        "mobilenet0.25": "mobilenet0.25",
        "mnet": "mobilenet0.25",
        "mobilenet": "mobilenet0.25",
        "resnet50": "resnet50",
        "r50": "resnet50",
    }
    if key not in aliases:
        raise ValueError(f"backbone must be one of {sorted(PRESETS)}, got {backbone!r}")
    return PRESETS[aliases[key]]
