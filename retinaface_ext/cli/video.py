"""``retinaface detect`` on a video file, a camera index or a stream address: the annotated
video (same frame rate and size) and one JSON line per frame in --out, or the lines on
stdout with --json alone."""

import json
import os
import re
import sys
from typing import Optional, Union

from ..images import display_path
from .args import UserError
from .shared import make_detector, output_folder, progress_bar, refuse_existing

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
#: The frame rate written when the source does not say (cameras, some streams).
FALLBACK_FPS = 30.0
#: mp4v needs frames of at least this many pixels a side.
MIN_VIDEO_SIDE = 2


def video_source(text: str) -> Optional[Union[int, str]]:
    """What ``detect INPUT`` reads as a video: a camera index (``camera:N``, or a whole
    number that names no file or folder here), a stream address (``scheme://...`` that
    is not a path here) or a video file (a video extension, not a folder); None for an
    image or a folder of images."""
    camera = re.fullmatch(r"camera:(\d+)", text)
    if camera:
        return int(camera[1])
    exists = os.path.lexists(text)
    if re.fullmatch(r"[0-9]+", text) and not exists:
        return int(text)
    if "://" in text and not exists:
        return text
    if text.lower().endswith(VIDEO_EXTENSIONS) and not os.path.isdir(text):
        return text
    return None


def output_names(source, out, partial: int = 0):
    """(annotated video, JSON lines) in ``out``, named after the source; ``partial`` > 0
    names the partial result of an interrupted run (``<stem>.partial.mp4``, then
    ``<stem>.partial2.mp4`` ...)."""
    if isinstance(source, int):
        stem = f"camera{source}"
    elif "://" in source:
        stem = "stream"
    else:
        stem = os.path.splitext(os.path.basename(source))[0]
    if partial:
        stem += ".partial" if partial == 1 else f".partial{partial}"
    return os.path.join(out, stem + ".mp4"), os.path.join(out, stem + ".jsonl")


def command_detect_video(args, source) -> int:
    from ..inference.video import open_video, video_properties

    for option, used in (("--recursive", args.recursive), ("--jsonl", args.jsonl), ("--shard", args.shard)):
        if used:
            raise UserError(f"{option} applies to folders of images, not to a video")
    if args.align:
        raise UserError("--align applies to images, not to a video")
    if not args.out and not args.json:
        raise UserError("a video needs --out (annotated video and JSON lines) or --json (lines on stdout)")
    name = display_path(source) if isinstance(source, str) else f"camera {source}"
    video_out = lines_out = None
    if args.out:
        output_folder(args.out)
        video_out, lines_out = output_names(source, args.out)
        if isinstance(source, str) and os.path.realpath(video_out) == os.path.realpath(source):
            raise UserError(
                f"--out {args.out}: the annotated video would overwrite {args.input}; choose another folder"
            )
        refuse_existing([video_out if not args.no_draw else None, lines_out], args.overwrite)
    detector = make_detector(args, target_size=args.target_size, max_size=args.max_size)
    capture = open_video(source)
    fps, width, height, count = video_properties(capture)
    if args.out and not args.no_draw and 0 < min(width, height) < MIN_VIDEO_SIDE:
        capture.release()
        raise UserError(
            f"{name}: frames of {width}x{height} pixels are too small to write as an mp4v video "
            f"(at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE}); --no-draw writes the JSON lines alone"
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    written = Outputs(video_out if not args.no_draw else None, lines_out, fps or FALLBACK_FPS)
    frames = 0
    try:
        with progress_bar(count, "detect", enabled=bool(args.out), unit="frame") as progress:
            for frame in detector.detect_video(capture, name=name):
                faces = frame.faces.above(args.threshold)
                line = json.dumps({"frame": frame.index, "time": round(frame.time, 6), "faces": faces.to_list()})
                if args.out:
                    written.add(frame.image, faces, line, args.threshold)
                else:
                    print(line, flush=True)
                frames += 1
                progress.update()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what was done
        where = ""
        if not isinstance(source, str) or "://" in source:  # a camera or a stream runs until stopped
            written.finish()
        elif args.out:  # a file cut short: its partial result beside any earlier whole one
            kept = written.finish(*free_partial_names(source, args.out, written))
            where = f"; the partial result is in {' and '.join(display_path(p) for p in kept)}" if kept else ""
        print(f"stopped after {frames} frames{where}", file=sys.stderr)
        return getattr(stop, "exit_status", 130)
    except BaseException:
        written.discard()
        raise
    finally:
        capture.release()
    written.finish()
    if args.out:
        print(f"{name}: {frames} frames at {fps or FALLBACK_FPS:g} fps -> {args.out}", file=sys.stderr)
    return 0


def free_partial_names(source, out, written):
    """The first ``<stem>.partial<k>`` names in ``out`` that hold no file yet."""
    for k in range(1, 10_000):
        video, lines = output_names(source, out, partial=k)
        paths = [video if written.video_path else None, lines if written.lines_path else None]
        if not any(p and os.path.lexists(p) for p in paths):
            return paths
    raise OSError(f"{out}: no free name for the partial result")


class Outputs:
    """The annotated video and the JSON lines of one run, written to temporary files and
    renamed into place at the end (an earlier result stays whole until then)."""

    def __init__(self, video_path, lines_path, fps):
        self.video_path, self.lines_path, self.fps = video_path, lines_path, fps
        self.writer = self.lines = None
        if lines_path:
            self.lines = open(self._temporary(lines_path), "w", encoding="utf-8")

    @staticmethod
    def _temporary(path):
        return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")

    def add(self, image, faces, line, threshold):
        import cv2

        from ..draw import draw_detections
        from ..images import opencv_path

        if self.video_path:
            if self.writer is None:
                height, width = image.shape[:2]
                # A temporary name that keeps the extension: OpenCV picks the container from it.
                temporary = opencv_path(self._temporary(self.video_path) + ".mp4", "video")
                self.writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
                if not self.writer.isOpened():
                    raise OSError(
                        f"{display_path(self.video_path)}: OpenCV cannot write an mp4v video of {width}x{height} "
                        f"frames here (--no-draw writes the JSON lines alone)"
                    )
            self.writer.write(draw_detections(image, faces, threshold))
        self.lines.write(line + "\n")

    def finish(self, video_path=None, lines_path=None):
        """Rename the outputs into place (or to the given names); returns their paths."""
        kept = []
        if self.writer is not None:
            self.writer.release()
            kept.append(video_path or self.video_path)
            os.replace(self._temporary(self.video_path) + ".mp4", kept[-1])
        if self.lines is not None:
            self.lines.close()
            kept.append(lines_path or self.lines_path)
            os.replace(self._temporary(self.lines_path), kept[-1])
        self.writer = self.lines = None
        return kept

    def discard(self):
        if self.writer is not None:
            self.writer.release()
        if self.lines is not None:
            self.lines.close()
        for path in (
            self.video_path and self._temporary(self.video_path) + ".mp4",
            self.lines_path and self._temporary(self.lines_path),
        ):
            if path and os.path.exists(path):
                os.remove(path)
        self.writer = self.lines = None
