"""Turning what users pass as images (paths, OpenCV arrays, tensors) into BGR tensors, with
errors that say which image is wrong and why."""

import os
from typing import Union

import cv2
import numpy as np
import torch

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]

#: Images larger than this (after resizing) are refused: pass ``max_size`` to shrink them.
MAX_PIXELS = 64 * 1024 * 1024


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file as OpenCV reads it: ``[H, W, 3]`` uint8 BGR (grayscale and alpha
    images are converted). Raises FileNotFoundError or ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image file: {path}")
    return image


def to_bgr_tensor(image: ImageLike, name: str = "image", device=None) -> torch.Tensor:
    """``[3, H, W]`` BGR values 0..255 on ``device`` (float32, or uint8 when the input is).

    Accepts a path; a numpy array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` (OpenCV's BGR)
    or ``[H, W, 4]`` (BGRA, alpha dropped); a tensor ``[H, W]`` or ``[C, H, W]`` with C
    in 1, 3, 4, BGR. Gray images are repeated into three channels. Arrays from numpy
    stay in their HWC memory, which is channels-last for the network.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"{name}: numpy images must be uint8 or floating point (0..255), "
                             f"got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"{name}: expected an [H, W, C] array, got shape {list(image.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise ValueError(f"{name}: tensor images must be uint8 or floating point (0..255), "
                             f"got {image.dtype}")
        tensor = image[None] if image.dim() == 2 else image
        if tensor.dim() != 3:
            raise ValueError(f"{name}: expected a [C, H, W] tensor, got shape {list(image.shape)}")
    else:
        raise TypeError(f"{name}: expected a path, a numpy array or a tensor, got {type(image).__name__}")

    channels, height, width = tensor.shape
    if height == 0 or width == 0:
        raise ValueError(f"{name}: empty image ({height}x{width})")
    if channels == 1:
        tensor = tensor.expand(3, height, width)
    elif channels == 4:
        tensor = tensor[:3]
    elif channels != 3:
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got {channels} (shape {list(tensor.shape)})")
    if tensor.is_floating_point():
        if tensor.dtype != torch.float32:
            tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}: the image holds NaN or infinite values")
    return tensor.to(device, non_blocking=True)


def resize_factor(height: int, width: int, target_size=None, max_size=None) -> float:
    """The WIDER FACE test protocol's scale: the short side to ``target_size``, unless the
    long side would then exceed ``max_size`` (rounded), in which case the long side to
    ``max_size``. Either may be None: no target keeps the scale at 1 unless too large."""
    factor = 1.0 if target_size is None else float(target_size) / min(height, width)
    if max_size is not None and round(factor * max(height, width)) > max_size:
        factor = float(max_size) / max(height, width)
    return factor
