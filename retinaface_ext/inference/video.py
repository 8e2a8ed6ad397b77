"""Faces in a video, a camera or a stream, frame by frame: OpenCV decodes ahead in a
background thread while the Detector runs on full batches of frames."""

import dataclasses
import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from .ahead import produce_ahead
from .detections import Detections

VideoSource = Union[str, os.PathLike, int, "cv2.VideoCapture"]  # noqa: F821 (cv2 is imported lazily)


@dataclasses.dataclass
class VideoFrame:
    """One decoded frame (BGR) and its faces; ``time`` in seconds from the start."""

    index: int
    time: float
    image: np.ndarray
    faces: Detections


def source_name(source: VideoSource) -> str:
    if isinstance(source, int):
        return f"camera {source}"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "video"


def open_video(source: VideoSource):
    """A ``cv2.VideoCapture`` of a file, a camera index or a stream address (an opened
    capture is used as it is). Raises ValueError naming the source when OpenCV cannot
    open it."""
    import cv2

    if isinstance(source, cv2.VideoCapture):
        return source
    if isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source):
        if not os.path.exists(source):
            raise FileNotFoundError(f"{os.fspath(source)}: no such video file")
    capture = cv2.VideoCapture(source if isinstance(source, int) else os.fspath(source))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{source_name(source)}: OpenCV cannot open it as a video")
    return capture


def video_properties(capture) -> Tuple[float, int, int, int]:
    """(frames per second, width, height, frame count); 0 where the source does not say."""
    import cv2

    return (
        float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
    )


def _frames(capture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        yield frame


def detect_video(detector, source: VideoSource, batch_size: Optional[int] = None, ahead: int = 64):
    """Per frame of ``source``, a :class:`VideoFrame`, in order. Frames are decoded up to
    ``ahead`` ahead in a background thread and detected ``batch_size`` at a time (default:
    the detector's batch size). Raises ValueError when the source opens but yields no
    frame. A capture passed in is left open; one opened here is released."""
    capture = open_video(source)
    owned = capture is not source
    name = source_name(source)
    fps = video_properties(capture)[0]
    size = batch_size or detector.batch_size
    index = 0
    frames = produce_ahead(_frames(capture), ahead)
    try:
        chunk = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == size:
                yield from _detect_chunk(detector, chunk, index, fps, name)
                index, chunk = index + len(chunk), []
        if chunk:
            yield from _detect_chunk(detector, chunk, index, fps, name)
            index += len(chunk)
    finally:
        frames.close()
        if owned:
            capture.release()
    if index == 0:
        raise ValueError(f"{name}: no frame could be read")


def _detect_chunk(detector, chunk, start, fps, name):
    found = detector.detect(chunk, names=[f"{name} frame {start + k}" for k in range(len(chunk))])
    for k, (image, faces) in enumerate(zip(chunk, found)):
        index = start + k
        yield VideoFrame(index, index / fps if fps > 0 else 0.0, image, faces)
