"""Folder runs that resume and shard: results as JSON lines, one per image, appended as
they come, so that a run that stops (killed, out of time) loses nothing already written
and a rerun does only the rest.

Each line is a whole JSON object holding ``image`` (the path relative to the folder),
``size`` and ``mtime_ns`` (the file's, when it was read), ``width``, ``height`` and
``faces``. An image counts as done when a line has its path, size and mtime; a file
changed since is done again (readers keep its last line). A line is written with one
``write`` and flushed; a last line without its newline that is the start of one of ours
(a run killed while writing) is cut off on the next run and its image redone. Only a
regular file that is empty or holds our lines is appended to: anything else (a user's
own JSON, a FIFO, a device) is refused before the run starts, and nothing of it is
changed.

Shards: process ``i`` of ``N`` takes the images whose path hashes to ``i`` (CRC-32, so the
share does not depend on the listing order or on the other files) and writes its own part
file, ``<stem>.shard<i>of<N>.jsonl`` beside ``<stem>.jsonl``. A run without shards on the
same file first merges the part files into it (then removes them), and does what no part
holds.
"""

import glob
import json
import os
import re
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

Key = Tuple[str, int, int]  # relative path, size, mtime_ns


#: How every line of ours begins (``ResultsWriter`` writes the keys in this order).
LINE_START = b'{"image":'


class ResultsFileError(ValueError):
    """A results file that is not ours to append to (a line that is not one of ours, or
    not a regular file)."""


def file_key(path: str, root: str) -> Key:
    """(relative path, size, mtime_ns); a dangling link's own, and -1s for an entry gone
    since it was listed (its line then says why it could not be read)."""
    try:
        status = os.stat(path)
    except OSError:
        try:
            status = os.lstat(path)
        except OSError:
            return os.path.relpath(path, root), -1, -1
    return os.path.relpath(path, root), status.st_size, status.st_mtime_ns


def shard_of(relative_path: str, count: int) -> int:
    return zlib.crc32(relative_path.replace(os.sep, "/").encode("utf-8")) % count


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/N"`` (0 <= i < N) as (i, N)."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {text}: expected i/N with 0 <= i < N, such as 0/4")
    return int(match[1]), int(match[2])


def shard_from_environment() -> Optional[Tuple[int, int]]:
    """(RANK, WORLD_SIZE) under torchrun (or any launcher that sets both), else None (one
    process: WORLD_SIZE 1). ValueError naming the variable for values that are not whole
    numbers with 0 <= RANK < WORLD_SIZE."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    numbers = {}
    for variable, text in (("RANK", rank), ("WORLD_SIZE", world)):
        if not re.fullmatch(r"\s*[0-9]+\s*", text):
            raise ValueError(f"the environment variable {variable}={text!r} is not a whole number >= 0")
        numbers[variable] = int(text)
    if numbers["WORLD_SIZE"] < 1 or numbers["RANK"] >= numbers["WORLD_SIZE"]:
        raise ValueError(
            f"the environment variables RANK={rank} and WORLD_SIZE={world} do not name a process: "
            "0 <= RANK < WORLD_SIZE"
        )
    if numbers["WORLD_SIZE"] == 1:
        return None
    return numbers["RANK"], numbers["WORLD_SIZE"]


def part_path(path: str, shard: Tuple[int, int]) -> str:
    stem = path[: -len(".jsonl")] if path.endswith(".jsonl") else path
    return f"{stem}.shard{shard[0]}of{shard[1]}.jsonl"


def part_paths(path: str) -> List[str]:
    stem = path[: -len(".jsonl")] if path.endswith(".jsonl") else path
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"\.shard\d+of\d+\.jsonl$")
    return sorted(p for p in glob.glob(glob.escape(stem) + ".shard*of*.jsonl") if pattern.match(os.path.basename(p)))


def check_results_target(path: str) -> None:
    """ResultsFileError unless ``path`` is absent or a regular file (a FIFO, a device or
    ``/dev/stdout`` would be waited on, read forever or never hold the lines)."""
    from ..images import open_regular_file

    if os.path.lexists(path):
        try:
            open_regular_file(path, "results file").close()
        except (OSError, ValueError) as error:
            raise ResultsFileError(f"{error}; results are appended to a regular file only") from None


def _record(line: bytes) -> Optional[dict]:
    """A line as one of our records, or None: a JSON object whose ``image`` is a string
    and whose ``size`` and ``mtime_ns``, where present, are whole numbers."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        return None
    for key in ("size", "mtime_ns"):
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], int)):
            return None
    return record


def read_lines(path: str, repair: bool = False) -> Tuple[List[dict], bool]:
    """The records of a results file and whether its last line was cut off; ``repair``
    truncates the file to its whole lines (and ends a whole last record that lacks its
    newline). Any line that is not one of ours, or a file that is not regular, is a
    :class:`ResultsFileError` naming it: nothing of such a file is changed."""
    if not os.path.lexists(path):
        return [], False
    check_results_target(path)
    with open(path, "rb") as handle:
        data = handle.read()
    records, start, cut, unended = [], 0, False, False
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        if not line.strip():
            start += len(line) + 1
            continue
        record = _record(line)
        if record is not None:
            records.append(record)
            unended = last
        elif last and (line.startswith(LINE_START) or LINE_START.startswith(line)):
            cut = True  # the start of one of our lines: a run stopped while writing it
            break
        else:
            raise ResultsFileError(f"{path}:{number}: not a results line of retinaface_ext; is this the right file?")
        start += len(line) + 1
    if repair and (cut or unended):
        with open(path, "r+b") as handle:
            if cut:
                handle.truncate(start)
            else:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
    return records, cut


def read_results(path: str) -> Dict[str, dict]:
    """Every image's last record, from ``path`` and its part files (a reader's merge)."""
    results: Dict[str, dict] = {}
    for source in [path, *part_paths(path)]:
        for record in read_lines(source)[0]:
            results[record["image"]] = record
    return results


def record_key(record: dict) -> Key:
    return record["image"], record.get("size"), record.get("mtime_ns")


class ResultsWriter:
    """Appends records to ``path`` (one ``write`` and a flush per line); only a regular
    file or a new one."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        check_results_target(path)
        self.path = path
        self.handle = open(path, "ab", buffering=0)

    def write(self, record: dict) -> None:
        self.handle.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.fsync(self.handle.fileno())
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge_parts(path: str) -> Tuple[int, int]:
    """Append the records of ``path``'s part files that it lacks, make that durable, then
    remove the parts. Returns (part files, records added)."""
    parts = part_paths(path)
    if not parts:
        return 0, 0
    have = {record_key(r) for r in read_lines(path, repair=True)[0]}
    added = 0
    with ResultsWriter(path) as writer:
        for part in parts:
            for record in read_lines(part)[0]:
                if record_key(record) not in have:
                    have.add(record_key(record))
                    writer.write(record)
                    added += 1
    for part in parts:
        os.remove(part)
    return len(parts), added


def pending(files: Iterable[str], root: str, done: Iterable[dict], shard: Optional[Tuple[int, int]]):
    """(the files this process still has to do, how many it skips as done)."""
    have = {record_key(r) for r in done}
    todo, skipped = [], 0
    for path in files:
        key = file_key(path, root)
        if shard is not None and shard_of(key[0], shard[1]) != shard[0]:
            continue
        if key in have:
            skipped += 1
        else:
            todo.append(path)
    return todo, skipped
