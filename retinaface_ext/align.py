"""Aligned face crops from the five landmarks, for face recognisers.

ArcFace-style recognisers (insightface and the models trained like it) expect a 112x112
crop whose eyes, nose and mouth corners sit on one fixed template. A face is aligned by
the similarity transform (rotation, uniform scale, shift; no reflection, no shear) that
maps its five landmarks onto the template with the least squared error (Umeyama's
method), applied with OpenCV's ``warpAffine``.
"""

import os
from typing import NamedTuple, Union

import numpy as np

#: The five points of the standard ArcFace 112x112 template, in the order of the
#: detector's landmarks: left eye, right eye, nose, left and right mouth corners (x, y).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112


class AlignedFaces(NamedTuple):
    """``crops [K, size, size, C]`` (the image's dtype and channels) and ``transforms
    [K, 2, 3]`` float64, each mapping image pixels (x, y, 1) to crop pixels."""

    crops: np.ndarray
    transforms: np.ndarray


def template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ArcFace template scaled to a ``size x size`` crop: ``[5, 2]`` float64."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a whole number of pixels >= 1, got {size!r}")
    return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The ``[2, 3]`` similarity transform ``x -> s R x + t`` that maps the points
    ``source [N, 2]`` onto ``target [N, 2]`` with the least squared error (Umeyama, 1991:
    rotation by the SVD of the covariance, its determinant forced to +1 so that the
    transform never mirrors). Raises ValueError when the source points all coincide."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 2 or source.shape != target.shape or len(source) < 2:
        raise ValueError(
            f"similarity_transform: source and target must be [N, 2] with N >= 2, got "
            f"{list(source.shape)} and {list(target.shape)}"
        )
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred**2).sum() / len(source)
    if not source_variance > 1e-12:  # also catches NaN
        raise ValueError("similarity_transform: the source points coincide (or are not finite)")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / source_variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def _as_landmarks(landmarks) -> np.ndarray:
    if hasattr(landmarks, "landmarks") and not isinstance(landmarks, np.ndarray):  # Detections
        landmarks = landmarks.landmarks
    if hasattr(landmarks, "detach"):  # a tensor
        landmarks = landmarks.detach().cpu().numpy()
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape in ((5, 2), (10,)):
        points = points.reshape(1, 5, 2)
    elif points.ndim == 2 and points.shape[1] == 10:
        points = points.reshape(-1, 5, 2)
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise ValueError(
            f"align_faces: landmarks must be [K, 5, 2] (or [K, 10], or one face's [5, 2]), "
            f"got {list(np.shape(landmarks))}"
        )
    return points


def align_faces(
    image: Union[np.ndarray, str, os.PathLike], landmarks, size: int = ARCFACE_SIZE, border_value: float = 0.0
) -> AlignedFaces:
    """One aligned ``size x size`` crop per face.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array (as OpenCV reads it; channels are kept as
            they are) or an image file.
        landmarks: ``[K, 5, 2]`` pixel coordinates (numpy or torch; ``[K, 10]`` or one
            face's ``[5, 2]`` work too), or :class:`~retinaface_ext.Detections`, whose
            landmarks are taken.
        size: the crop's side; the ArcFace 112x112 template is scaled to it.
        border_value: what fills the crop where it reaches outside the image.

    Returns:
        :class:`AlignedFaces`: the crops and the ``[K, 2, 3]`` transforms (image pixels
        to crop pixels; ``cv2.invertAffineTransform`` maps back).
    """
    import cv2

    if isinstance(image, (str, os.PathLike)):
        from .images import read_image

        image = read_image(image)
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(
            f"align_faces: image must be a non-empty [H, W] or [H, W, C] array, got "
            f"{type(image).__name__} {list(np.shape(image))}"
        )
    points = _as_landmarks(landmarks)
    destination = template(size)
    transforms = np.zeros((len(points), 2, 3))
    for index, face in enumerate(points):
        try:
            transforms[index] = similarity_transform(face, destination)
        except ValueError:
            raise ValueError(
                f"align_faces: face {index}: its landmarks coincide or are not finite, so it cannot be aligned"
            ) from None
    crops = np.zeros((len(points), size, size) + image.shape[2:], dtype=image.dtype)
    for crop, transform in zip(crops, transforms):
        crop[...] = cv2.warpAffine(
            image,
            transform,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border_value,
        ).reshape(crop.shape)
    return AlignedFaces(crops, transforms)
