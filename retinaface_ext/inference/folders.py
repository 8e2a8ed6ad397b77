"""Folder runs as a library: a Detector over the images of a folder, read ahead in
background threads and detected in batches, optionally recorded as JSON lines that a
rerun resumes and that shards split between processes (the file format and the rules
are :mod:`.runs`'). ``retinaface detect DIR`` is this plus its outputs::

    run = FolderRun.plan(files, root, results="faces.jsonl")  # merges part files, skips what is done
    for item in run.detect(detector, threshold=0.6):
        print(item.path, len(item.faces) if item.faces is not None else item.error)
"""

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from .ahead import read_ahead
from .detections import Detections
from .runs import ResultsWriter, file_key, merge_parts, part_path, pending, read_lines, shard_of

Item = TypeVar("Item")


def batches(items: Iterable[Item], size: int) -> Iterator[List[Item]]:
    """Lists of ``size`` consecutive items (the last one shorter) of any iterable."""
    chunk: List[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def key_record(path: str, root: str) -> dict:
    """The fields that identify an image in a results line: its path relative to ``root``,
    its size and mtime."""
    relative, size, mtime_ns = file_key(path, root)
    return {"image": relative, "size": size, "mtime_ns": mtime_ns}


@dataclass
class FolderImage:
    """One image of a folder run: its pixels and faces, or why it could not be read."""

    path: str
    image: Optional[np.ndarray]
    faces: Optional[Detections]
    error: Optional[Exception] = None


@dataclass
class FolderRun:
    """What one process of a folder run does: ``files`` (those still to do), named
    relative to ``root``; ``results`` the JSON lines file it appends to (None: none),
    with what opening it found: images ``skipped`` as done, part files ``merged`` (and
    the images they added), a last line that was ``cut`` off."""

    files: List[str]
    root: str
    results: Optional[str] = None
    shard: Optional[Tuple[int, int]] = None
    skipped: int = 0
    merged: Tuple[int, int] = (0, 0)
    cut: bool = False

    @classmethod
    def plan(
        cls, files: List[str], root: str, results: Optional[str] = None, shard: Optional[Tuple[int, int]] = None
    ) -> "FolderRun":
        """The run of ``files`` (under ``root``) for this process: its ``shard`` (i, N)
        of them, or all; with ``results``, the part file of its shard (else the file
        itself, after merging the part files into it), and the images already recorded
        there skipped. ValueError (:class:`~.runs.ResultsFileError`) for a results file
        that is not ours to append to; nothing of it is changed."""
        if results is None:
            if shard is not None:
                files = [f for f in files if shard_of(os.path.relpath(f, root), shard[1]) == shard[0]]
            return cls(files, root, shard=shard)
        if os.path.isdir(results):
            raise ValueError(f"{results}: is a folder, not a file")
        target = part_path(results, shard) if shard else results
        merged = merge_parts(results) if shard is None else (0, 0)
        done, cut = read_lines(target, repair=True)
        todo, skipped = pending(files, root, done, shard)
        return cls(todo, root, target, shard, skipped, merged, cut)

    def detect(
        self, detector, threshold: float = 0.0, batch_size: Optional[int] = None, workers: Optional[int] = None
    ) -> Iterator[FolderImage]:
        """Detects the run's files in order, ``batch_size`` at a time (default: the
        detector's), decoding ``workers`` ahead (default: the CPUs, at most 4), and
        yields each with its faces above ``threshold``. With a results file, each image's
        line is appended (and flushed) before it is yielded, and an image that cannot be
        read is a line with an ``error`` and a :class:`FolderImage` with it: the run goes
        on. Without one, such an image raises."""
        writer = ResultsWriter(self.results) if self.results is not None else None

        def read(path):
            try:
                return detector.read_image(path)
            except (OSError, ValueError) as error:
                if writer is None:
                    raise
                return error

        try:
            for chunk in batches(read_ahead(self.files, read, workers), batch_size or detector.batch_size):
                readable = [(path, image) for path, image in chunk if not isinstance(image, Exception)]
                found = detector.detect([image for _, image in readable], names=[path for path, _ in readable])
                faces_of = dict(zip([path for path, _ in readable], found))
                for path, image in chunk:
                    if isinstance(image, Exception):
                        writer.write({**key_record(path, self.root), "error": str(image)})
                        yield FolderImage(path, None, None, image)
                        continue
                    faces = faces_of[path].above(threshold)
                    if writer is not None:
                        writer.write(
                            {
                                **key_record(path, self.root),
                                "width": image.shape[1],
                                "height": image.shape[0],
                                "faces": faces.to_list(),
                            }
                        )
                    yield FolderImage(path, image, faces)
        finally:
            if writer is not None:
                writer.close()
