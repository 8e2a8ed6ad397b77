"""``retinaface detect`` on a video file, a camera index or a stream address: the annotated
video (same frame rate and size) and one JSON line per frame in --out, or the lines on
stdout with --json alone."""

import json
import os
import sys

from .args import UserError
from .shared import make_detector, output_folder, progress_bar

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
#: The frame rate written when the source does not say (cameras, some streams).
FALLBACK_FPS = 30.0


def is_video_source(text: str) -> bool:
    """A camera index, a stream address, or a file with a video extension."""
    return text.isdigit() or "://" in text or text.lower().endswith(VIDEO_EXTENSIONS)


def output_names(args):
    """(annotated video, JSON lines) in --out, named after the input."""
    if args.input.isdigit():
        stem = f"camera{args.input}"
    elif "://" in args.input:
        stem = "stream"
    else:
        stem = os.path.splitext(os.path.basename(args.input))[0]
    return os.path.join(args.out, stem + ".mp4"), os.path.join(args.out, stem + ".jsonl")


def command_detect_video(args) -> int:
    from ..inference.video import open_video, video_properties

    for option, used in (("--recursive", args.recursive), ("--jsonl", args.jsonl), ("--shard", args.shard)):
        if used:
            raise UserError(f"{option} applies to folders of images, not to a video")
    if args.align:
        raise UserError("--align applies to images, not to a video")
    if not args.out and not args.json:
        raise UserError("a video needs --out (annotated video and JSON lines) or --json (lines on stdout)")
    source = int(args.input) if args.input.isdigit() else args.input
    video_out = lines_out = None
    if args.out:
        os.makedirs(output_folder(args.out), exist_ok=True)
        video_out, lines_out = output_names(args)
        if "://" not in args.input and os.path.realpath(video_out) == os.path.realpath(args.input):
            raise UserError(
                f"--out {args.out}: the annotated video would overwrite {args.input}; choose another folder"
            )
    detector = make_detector(args, target_size=args.target_size, max_size=args.max_size)
    capture = open_video(source)
    fps, width, height, count = video_properties(capture)
    written = Outputs(video_out if not args.no_draw else None, lines_out, fps or FALLBACK_FPS, (width, height))
    frames = 0
    try:
        with progress_bar(count, "detect", enabled=bool(args.out), unit="frame") as progress:
            for frame in detector.detect_video(capture):
                faces = frame.faces.above(args.threshold)
                line = json.dumps({"frame": frame.index, "time": round(frame.time, 6), "faces": faces.to_list()})
                if args.out:
                    written.add(frame.image, faces, line, args.threshold)
                else:
                    print(line, flush=True)
                frames += 1
                progress.update()
    except KeyboardInterrupt:  # a camera or a stream runs until stopped: keep what was done
        written.finish()
        print(f"stopped after {frames} frames", file=sys.stderr)
        return 130
    except BaseException:
        written.discard()
        raise
    finally:
        capture.release()
    written.finish()
    if args.out:
        print(f"{args.input}: {frames} frames at {fps or FALLBACK_FPS:g} fps -> {args.out}", file=sys.stderr)
    return 0


class Outputs:
    """The annotated video and the JSON lines of one run, written to temporary files and
    renamed into place at the end (an earlier result stays whole until then)."""

    def __init__(self, video_path, lines_path, fps, size):
        self.video_path, self.lines_path, self.fps, self.size = video_path, lines_path, fps, size
        self.writer = self.lines = None
        if lines_path:
            self.lines = open(self._temporary(lines_path), "w", encoding="utf-8")

    @staticmethod
    def _temporary(path):
        return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")

    def add(self, image, faces, line, threshold):
        import cv2

        from ..draw import draw_detections

        if self.video_path:
            if self.writer is None:
                size = (image.shape[1], image.shape[0])
                # A temporary name that keeps the extension: OpenCV picks the container from it.
                self.writer = cv2.VideoWriter(
                    self._temporary(self.video_path) + ".mp4", cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size
                )
                if not self.writer.isOpened():
                    raise OSError(f"{self.video_path}: OpenCV cannot write an mp4v video here")
            self.writer.write(draw_detections(image, faces, threshold))
        self.lines.write(line + "\n")

    def finish(self):
        if self.writer is not None:
            self.writer.release()
            os.replace(self._temporary(self.video_path) + ".mp4", self.video_path)
        if self.lines is not None:
            self.lines.close()
            os.replace(self._temporary(self.lines_path), self.lines_path)
        self.writer = self.lines = None

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
