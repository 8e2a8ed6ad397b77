"""What the Detector returns: the faces of one image, as tensors and face by face."""

from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import torch

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class Face(NamedTuple):
    """One detected face: ``box [4]`` x1, y1, x2, y2, ``score`` and ``landmarks [5, 2]``."""

    box: torch.Tensor
    score: float
    landmarks: torch.Tensor


@dataclass
class Detections:
    """The faces found in one image, in decreasing score order, in the image's pixels.

    ``boxes [K, 4]`` x1, y1, x2, y2; ``scores [K]``; ``landmarks [K, 5, 2]`` (x, y) of the
    left eye, right eye, nose, left and right mouth corners (as seen in the image);
    ``image_size`` (height, width) of the image, when known.

    ``len(d)`` faces; ``d[i]`` is a :class:`Face`, ``for face in d`` walks them; a slice,
    a boolean mask or an index tensor gives the selected faces as Detections.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor
    image_size: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return self.scores.shape[0]

    def __iter__(self) -> Iterator[Face]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: Union[int, slice, torch.Tensor, List[int]]) -> Union[Face, "Detections"]:
        if isinstance(index, int) or (
            isinstance(index, torch.Tensor) and index.dim() == 0 and not index.dtype == torch.bool
        ):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"face index {i} out of range for {len(self)} faces")
            return Face(self.boxes[i], float(self.scores[i]), self.landmarks[i])
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index], self.image_size)

    def to(self, device) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device), self.image_size)

    def above(self, threshold: float) -> "Detections":
        """Only the detections with score >= ``threshold``."""
        return self[self.scores >= threshold]

    def clipped(self) -> "Detections":
        """The boxes clipped to the image (``0 <= x <= width``, ``0 <= y <= height``);
        landmarks stay where they were predicted. Needs ``image_size``."""
        if self.image_size is None:
            raise ValueError("clipped() needs the image size; these detections do not know it")
        height, width = self.image_size
        limit = torch.tensor([width, height, width, height], dtype=self.boxes.dtype, device=self.boxes.device)
        boxes = torch.minimum(self.boxes.clamp(min=0), limit)
        return Detections(boxes, self.scores, self.landmarks, self.image_size)

    def to_list(self) -> List[dict]:
        """JSON-ready: one dict per face with ``box``, ``score`` and ``landmarks``."""
        boxes, scores, landmarks = (t.detach().cpu().tolist() for t in (self.boxes, self.scores, self.landmarks))
        return [
            {"box": box, "score": score, "landmarks": dict(zip(LANDMARK_NAMES, face_landmarks))}
            for box, score, face_landmarks in zip(boxes, scores, landmarks)
        ]
