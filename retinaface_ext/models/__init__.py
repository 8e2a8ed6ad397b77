"""RetinaFace networks: backbones, FPN, SSH (optionally deformable), heads, presets."""

from .backbones import MobileNetV1, ResNet50
from .config import MEAN_BGR, MOBILENET_025, PRESETS, RESNET50, DetectionSettings, RetinaFaceConfig, config_for
from .inference import InferenceRetinaFace
from .layers import PaddingMask, fold_batchnorm
from .loading import read_state_dict
from .retinaface import FPN, SSH, RetinaFace

__all__ = [
    "RetinaFace",
    "InferenceRetinaFace",
    "RetinaFaceConfig",
    "MOBILENET_025",
    "RESNET50",
    "PRESETS",
    "config_for",
    "MEAN_BGR",
    "DetectionSettings",
    "MobileNetV1",
    "ResNet50",
    "FPN",
    "SSH",
    "PaddingMask",
    "fold_batchnorm",
    "read_state_dict",
]
