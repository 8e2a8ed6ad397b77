"""ImageNet weights for the backbone: Pytorch_Retinaface's ``mobilenetV1X0.25_pretrain.tar``
(a dict whose ``state_dict`` keys carry ``module.``) or torchvision's ResNet-50 state dict."""

import os

import torch

from ..models import RetinaFace


def load_pretrained_backbone(model: RetinaFace, path) -> None:
    """Loads the backbone part of ``path`` into ``model.body``: every backbone tensor must
    be there with its shape; the classifier (``fc.*``) is left out."""
    path = os.fspath(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"--pretrained-backbone {path}: not a readable checkpoint ({type(error).__name__})") from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"--pretrained-backbone {path}: expected a state dict")
    weights = {}
    for key, value in checkpoint.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        key = key[len("body.") :] if key.startswith("body.") else key
        if isinstance(value, torch.Tensor) and not key.startswith("fc."):
            weights[key] = value
    expected = model.body.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    mis_shaped = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or mis_shaped:
        raise ValueError(
            f"--pretrained-backbone {path} does not fit the {model.config.backbone} backbone: "
            f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), "
            f"{len(mis_shaped)} of another shape ({', '.join(mis_shaped[:5])})"
        )
    model.body.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
