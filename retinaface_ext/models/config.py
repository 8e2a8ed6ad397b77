"""The two published RetinaFace configurations, as plain dataclasses."""

from dataclasses import dataclass
from typing import Tuple


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
    clip: bool = False
    anchors_per_location: int = 2
    image_size: int = 640  # square training crop
    loc_weight: float = 2.0
    batch_size: int = 32
    epochs: int = 250
    decay_epochs: Tuple[int, int] = (190, 220)


MOBILENET_025 = RetinaFaceConfig(
    backbone="mobilenet0.25", in_channels=(64, 128, 256), out_channels=64, image_size=640,
    batch_size=32, epochs=250, decay_epochs=(190, 220),
)
RESNET50 = RetinaFaceConfig(
    backbone="resnet50", in_channels=(512, 1024, 2048), out_channels=256, image_size=840,
    batch_size=24, epochs=100, decay_epochs=(70, 90),
)

PRESETS = {"mobilenet0.25": MOBILENET_025, "resnet50": RESNET50}


def config_for(backbone: str) -> RetinaFaceConfig:
    """The preset of a backbone name: ``"mobilenet0.25"`` or ``"resnet50"``."""
    key = backbone.lower().replace("-", "").replace("_", "")
    aliases = {"mobilenet0.25": "mobilenet0.25", "mnet": "mobilenet0.25", "mobilenet": "mobilenet0.25",
               "resnet50": "resnet50", "r50": "resnet50"}
    if key not in aliases:
        raise ValueError(f"backbone must be one of {sorted(PRESETS)}, got {backbone!r}")
    return PRESETS[aliases[key]]
