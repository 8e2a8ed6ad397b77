"""Drawing detections on an image with OpenCV."""

import cv2
import numpy as np

# Pytorch_Retinaface's landmark colours (BGR): left eye red, right eye yellow, nose
# magenta, left mouth corner green, right mouth corner blue.
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(
    image: np.ndarray, detections, threshold: float = 0.5, box_color=(0, 0, 255), thickness: int = 2
) -> np.ndarray:
    """A copy of ``image`` (OpenCV ``[H, W, 3]`` uint8 BGR) with the boxes, scores and
    landmarks of ``detections`` (:class:`~retinaface_ext.inference.Detections`) whose score
    is at least ``threshold``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image: expected an [H, W, 3] BGR numpy array, got {getattr(image, 'shape', type(image).__name__)}"
        )
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    kept = detections.above(threshold)
    boxes = kept.boxes.detach().cpu().numpy()
    scores = kept.scores.detach().cpu().numpy()
    landmarks = kept.landmarks.detach().cpu().numpy()
    for box, score, face_landmarks in zip(boxes, scores, landmarks):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), box_color, thickness)
        label_y = y1 - 4 if y1 >= 14 else y1 + 14
        cv2.putText(
            canvas, f"{score:.2f}", (x1, label_y), cv2.FONT_HERSHEY_DUPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        for (x, y), color in zip(face_landmarks, LANDMARK_COLORS):
            cv2.circle(canvas, (int(round(x)), int(round(y))), max(1, thickness), color, -1)
    return canvas
