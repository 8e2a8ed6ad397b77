"""Faces in a video, a camera or a stream, frame by frame: OpenCV decodes ahead in a
background thread while the Detector runs on full batches of frames."""

import dataclasses
import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from .ahead import AHEAD_BYTES, produce_ahead
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
    from ..images import display_path

    if isinstance(source, int):
        return f"camera {source}"
    if isinstance(source, (str, os.PathLike)):
        return display_path(source)
    return "video"


#: Decoded frames waiting for the detector: at most this many, and AHEAD_BYTES of them
#: (64 frames of 1080p, 5 of 8K, one at a time beyond that).
AHEAD_FRAMES = 64


def open_video(source: VideoSource):
    """A ``cv2.VideoCapture`` of a file, a camera index or a stream address (an opened
    capture is used as it is). Raises ValueError naming the source when OpenCV cannot
    open it."""
    import cv2

    from ..images import display_path, opencv_path

    if isinstance(source, cv2.VideoCapture):
        return source
    if isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source):
        if not os.path.exists(source):
            raise FileNotFoundError(f"{display_path(source)}: no such video file")
        if os.path.isdir(source):
            raise ValueError(f"{display_path(source)}: is a folder, not a video file")
    capture = cv2.VideoCapture(source if isinstance(source, int) else opencv_path(source, "video"))
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


def detect_video(
    detector,
    source: VideoSource,
    batch_size: Optional[int] = None,
    name: Optional[str] = None,
    ahead_bytes: int = AHEAD_BYTES,
):
    """Per frame of ``source``, a :class:`VideoFrame`, in order. Frames are decoded ahead
    in a background thread (at most ``ahead_bytes`` of them, and 64) and detected
    ``batch_size`` at a time (default: the detector's; fewer where the frames would pass
    the detector's pixels per forward pass). Raises ValueError naming the source
    (``name``, default its path) when it opens but yields no frame. A capture passed in is
    left open; one opened here is released."""
    from ..models.config import whole_number

    size = detector.batch_size if batch_size is None else whole_number(batch_size, "batch_size")
    ahead_bytes = whole_number(ahead_bytes, "ahead_bytes")
    capture = open_video(source)
    owned = capture is not source
    name = name if name is not None else source_name(source)
    fps = video_properties(capture)[0]
    index = 0
    frames = produce_ahead(_frames(capture), AHEAD_FRAMES, ahead_bytes, size_of=lambda frame: frame.nbytes)
    try:
        chunk, pixels = [], 0
        for frame in frames:
            frame_pixels = detector.pass_pixels(frame.shape[0], frame.shape[1])
            if chunk and pixels + frame_pixels > detector.max_pass_pixels:
                yield from _detect_chunk(detector, chunk, index, fps, name)
                index, chunk, pixels = index + len(chunk), [], 0
            chunk.append(frame)
            pixels += frame_pixels
            if len(chunk) == size:
                yield from _detect_chunk(detector, chunk, index, fps, name)
                index, chunk, pixels = index + len(chunk), [], 0
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
