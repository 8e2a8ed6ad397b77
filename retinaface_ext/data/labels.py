# Over 400 lines: the two formats share the row assembly, the checks and the errors; their
# fast and exact readers are kept side by side so that they agree.
"""Reading face annotation files: the RetinaFace ``label.txt`` (boxes and five landmarks,
the layout Pytorch_Retinaface trains on) and the official WIDER FACE
``wider_face_*_bbx_gt.txt`` (boxes only). The format is told from the content.

Every face becomes one row of 15 numbers, as the seed's ``WiderFaceDetection`` builds it:
x1, y1, x2, y2, then the (x, y) of the left eye, right eye, nose tip, left and right mouth
corners, then the label: 1 for a face with landmarks, -1 for one without (its landmark
values are the file's, -1 in WIDER's files). All numbers of a file are parsed at once
(:mod:`.numbers`); where something is off, the file is read again line by line, and a
line that is wrong raises :class:`LabelFileError` naming the file and line.
"""

import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..targets import BOX, LABEL, LANDMARKS, WIDTH
from .numbers import ScannedLines, newline_positions, scan_lines

RETINAFACE = "retinaface"
WIDER_BBX_GT = "wider_bbx_gt"
#: Fields of a RetinaFace face line: x y w h, five (x, y, visibility), then a score; some
#: files leave out the score, and validation files hold the box only.
RETINAFACE_FIELDS = (20, 19, 4)
#: x y w h blur expression illumination invalid occlusion pose
WIDER_FIELDS = 10
_LANDMARK_COLUMNS = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]
#: Coordinates beyond this many pixels are refused: no image is that large, and their
#: products (areas, IoUs) would overflow float32 in training.
MAX_COORDINATE = 1e6
#: A line longer than this is refused before it is split: 20 numbers or an image path fit
#: in far less, and splitting one line of megabytes takes tens of times its size.
MAX_LINE = 4096
#: What a number may look like (what numpy's parser reads; not Python's ``1_000`` or
#: non-ASCII digits).
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


class LabelFileError(ValueError):
    """A malformed annotation file; the message starts with ``path:line:``."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = path, line


@dataclass(frozen=True)
class Annotations:
    """The faces of every image of one annotation file.

    ``names[i]`` is image i's path relative to the images folder; its faces are
    ``targets[offsets[i]:offsets[i + 1]]`` ([G, 15] float32), read from the file lines
    ``lines[offsets[i]:offsets[i + 1]]``. ``dropped`` faces (width or height <= 0) are
    not in ``targets``.
    """

    path: str
    format: str
    names: List[str]
    offsets: np.ndarray
    targets: np.ndarray
    lines: np.ndarray
    dropped: int

    def __len__(self) -> int:
        return len(self.names)

    def faces(self, index: int) -> np.ndarray:
        return self.targets[self.offsets[index] : self.offsets[index + 1]]


def read_annotations(path) -> Annotations:
    """Parses a RetinaFace ``label.txt`` or a WIDER FACE ``bbx_gt`` file (told apart by
    whether image lines start with ``#``). Faces of non-positive width or height are
    dropped, with one warning per file giving their count."""
    path = os.fspath(path)
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
        raise ValueError(f"{path}: not a regular file")
    with open(path, "rb") as handle:
        data = handle.read()
    newlines = newline_positions(data)
    _check_line_lengths(path, data, newlines)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LabelFileError(path, data[: error.start].count(b"\n") + 1, "not UTF-8 text") from None
    scanned = scan_lines(data, newlines)
    retinaface = _is_retinaface(scanned.texts if scanned is not None else text.split("\n"))
    annotations = None
    if scanned is not None:
        annotations = _fast_retinaface(path, scanned) if retinaface else _fast_wider_bbx_gt(path, scanned)
    if annotations is None:  # something is off (or unusual): line by line, for an exact error
        lines = text.split("\n")
        if not any(line.strip() for line in lines):
            raise LabelFileError(path, 1, "the file holds no annotations")
        annotations = _read_retinaface(path, lines) if retinaface else _read_wider_bbx_gt(path, lines)
    if annotations.dropped:
        warnings.warn(
            f"{path}: dropped {annotations.dropped} face(s) whose width or height is not positive",
            stacklevel=2,
        )
    return annotations


def _check_line_lengths(path: str, data: bytes, newlines: np.ndarray) -> None:
    """Refuses a line longer than MAX_LINE bytes before anything else reads the file."""
    lengths = np.diff(newlines, prepend=-1, append=len(data)) - 1  # without the newline
    long = np.flatnonzero(lengths > MAX_LINE)
    if len(long):
        raise LabelFileError(
            path,
            int(long[0]) + 1,
            f"a line of {int(lengths[long[0]])} bytes (at most {MAX_LINE}: an image path, or one face's numbers)",
        )


def _is_retinaface(lines: Sequence[str]) -> bool:
    return any(line.lstrip().startswith("#") for line in lines)


def _fast_retinaface(path: str, scanned: ScannedLines) -> Optional[Annotations]:
    """The whole file from one scan; None where the line-by-line reader must explain."""
    if not all(text.startswith("#") for text in scanned.texts):
        return None
    headers = scanned.text_lines
    face_lines = np.flatnonzero(scanned.counts > 0)
    widths = scanned.counts[face_lines]
    if (
        len(headers) == 0
        or (len(face_lines) and face_lines[0] < headers[0])
        or not np.isin(widths, RETINAFACE_FIELDS).all()
    ):
        return None
    names = [_image_name(text, path, int(line) + 1) for text, line in zip(scanned.texts, headers)]
    first_value = (np.cumsum(scanned.counts) - scanned.counts)[face_lines]
    rows = _retinaface_rows(scanned.values, first_value, widths)
    image_of_face = np.searchsorted(headers, face_lines) - 1
    return _assemble(path, RETINAFACE, names, image_of_face, _retinaface_targets(rows), rows[:, 2:4], face_lines + 1)


def _fast_wider_bbx_gt(path: str, scanned: ScannedLines) -> Optional[Annotations]:
    counts, values = scanned.counts, scanned.values
    is_text = np.zeros(len(counts), dtype=bool)
    is_text[scanned.text_lines] = True
    order = np.flatnonzero(is_text | (counts > 0)).tolist()  # the non-blank lines
    if not order:
        return None
    first_value = np.cumsum(counts) - counts
    text_of = dict(zip(scanned.text_lines.tolist(), scanned.texts))
    names, face_ranges = [], []
    at = 0
    while at < len(order):
        name_line = order[at]
        if not is_text[name_line] or len(text_of[name_line].split()) != 1 or at + 1 >= len(order):
            return None
        count_line = order[at + 1]
        if is_text[count_line] or counts[count_line] != 1:
            return None
        count = values[first_value[count_line]]
        if count != int(count) or count < 0:
            return None
        names.append(text_of[name_line])
        count, at = int(count), at + 2
        if count == 0:
            if at < len(order) and not is_text[order[at]] and counts[order[at]] == WIDER_FIELDS:
                at += 1
            continue
        faces = order[at : at + count]
        if len(faces) < count or is_text[faces].any() or (counts[faces] != WIDER_FIELDS).any():
            return None
        face_ranges.append((len(names) - 1, faces))
        at += count
    face_lines = np.array([line for _, lines in face_ranges for line in lines], dtype=np.int64)
    image_of_face = np.repeat([image for image, _ in face_ranges], [len(lines) for _, lines in face_ranges])
    rows = values[first_value[face_lines][:, None] + np.arange(WIDER_FIELDS)].reshape(-1, WIDER_FIELDS)
    return _assemble(
        path, WIDER_BBX_GT, names, image_of_face.astype(np.int64), _wider_targets(rows), rows[:, 2:4], face_lines + 1
    )


def _image_name(header: str, path: str, number: int) -> str:
    """The image path of a ``# name`` line; a trailing ``width height`` (in some
    validation label files) is not part of it."""
    name = header[1:].strip()
    parts = name.split()
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        name = parts[0]
    if not name:
        raise LabelFileError(path, number, "'#' must be followed by an image path")
    return name


def _read_retinaface(path: str, lines: Sequence[str]) -> Annotations:
    names: List[str] = []
    image_of_face: List[int] = []
    face_lines: List[str] = []
    face_numbers: List[int] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == "#":
            names.append(_image_name(stripped, path, number))
        elif not names:
            raise LabelFileError(path, number, "a face line before any '# image' line")
        else:
            face_lines.append(stripped)
            face_numbers.append(number)
            image_of_face.append(len(names) - 1)
    widths = np.fromiter((len(line.split()) for line in face_lines), np.int64, len(face_lines))
    for row in np.flatnonzero(~np.isin(widths, RETINAFACE_FIELDS)):
        raise LabelFileError(
            path,
            face_numbers[row],
            f"expected 20 numbers (x y w h, five landmarks as x y visibility, score), 19 "
            f"(no score) or 4 (x y w h), got {widths[row]}",
        )
    values = _parse_numbers(path, face_lines, face_numbers, int(widths.sum()))
    first_value = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    rows = _retinaface_rows(values, first_value, widths)
    return _assemble(
        path,
        RETINAFACE,
        names,
        np.asarray(image_of_face, np.int64),
        _retinaface_targets(rows),
        rows[:, 2:4],
        np.asarray(face_numbers, np.int64),
    )


def _retinaface_rows(values: np.ndarray, first_value: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """[F, 20] face lines; fields a line leaves out are -1 (no landmarks, no score)."""
    rows = np.full((len(widths), 20), -1.0)
    for width in RETINAFACE_FIELDS:
        chosen = np.flatnonzero(widths == width)
        rows[chosen, :width] = values[first_value[chosen, None] + np.arange(width)]
    return rows


def _retinaface_targets(rows: np.ndarray) -> np.ndarray:
    targets = np.empty((len(rows), WIDTH), dtype=np.float32)
    targets[:, 0:2] = rows[:, 0:2]
    targets[:, 2:4] = rows[:, 0:2] + rows[:, 2:4]
    targets[:, LANDMARKS] = rows[:, _LANDMARK_COLUMNS]
    targets[:, LABEL] = np.where(rows[:, 4] < 0, -1.0, 1.0)  # the seed's rule: no left eye, no landmarks
    return targets


def _wider_targets(rows: np.ndarray) -> np.ndarray:
    targets = np.full((len(rows), WIDTH), -1.0, dtype=np.float32)
    targets[:, 0:2] = rows[:, 0:2]
    targets[:, 2:4] = rows[:, 0:2] + rows[:, 2:4]
    return targets


def _read_wider_bbx_gt(path: str, lines: Sequence[str]) -> Annotations:
    entries = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    names: List[str] = []
    image_of_face: List[int] = []
    face_lines: List[str] = []
    face_numbers: List[int] = []
    at = 0
    while at < len(entries):
        number, name = entries[at]
        if len(name.split()) != 1 or _is_number(name):
            raise LabelFileError(
                path,
                number,
                f"expected an image path, got {name!r}"
                + (f" (the count of {names[-1]} does not match its faces)" if names else ""),
            )
        names.append(name)
        if at + 1 >= len(entries):
            raise LabelFileError(path, number, f"{name} has no face count line after it")
        count_number, count_text = entries[at + 1]
        if not (count_text.isascii() and count_text.isdigit()):
            raise LabelFileError(path, count_number, f"expected the number of faces of {name}, got {count_text!r}")
        count = int(count_text)
        at += 2
        if count == 0:  # the official files follow a count of 0 with one line of zeros
            if (
                at < len(entries)
                and len(entries[at][1].split()) == WIDER_FIELDS
                and _is_number(entries[at][1].split()[0])
            ):
                at += 1
            continue
        for k in range(count):
            if at >= len(entries) or len(entries[at][1].split()) == 1:
                where, ending = (entries[at][0], "") if at < len(entries) else (entries[-1][0], " (the file ends)")
                raise LabelFileError(
                    path, where, f"{name} (line {number}) announces {count} faces but {k} follow{ending}"
                )
            face_number, face = entries[at]
            fields = len(face.split())
            if fields != WIDER_FIELDS:
                raise LabelFileError(
                    path,
                    face_number,
                    f"expected {WIDER_FIELDS} numbers (x y w h blur expression illumination invalid "
                    f"occlusion pose), got {fields}",
                )
            face_lines.append(face)
            face_numbers.append(face_number)
            image_of_face.append(len(names) - 1)
            at += 1
    values = _parse_numbers(path, face_lines, face_numbers, WIDER_FIELDS * len(face_lines))
    values = values.reshape(-1, WIDER_FIELDS)
    return _assemble(
        path,
        WIDER_BBX_GT,
        names,
        np.asarray(image_of_face, np.int64),
        _wider_targets(values),
        values[:, 2:4],
        np.asarray(face_numbers, np.int64),
    )


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def _parse_numbers(path: str, face_lines: List[str], face_numbers: List[int], expected_count: int) -> np.ndarray:
    """Every number of the face lines, parsed in one call (C speed); the line-by-line
    search for the culprit only runs when that fails."""
    text = "\n".join(face_lines)
    try:
        values = np.fromstring(text, dtype=np.float64, sep=" ")
    except ValueError:
        values = None
    if values is None or len(values) != expected_count:
        for line, number in zip(face_lines, face_numbers):
            for field in line.split():
                if not _is_number(field):
                    raise LabelFileError(path, number, f"{field!r} is not a number")
        raise LabelFileError(path, face_numbers[0] if face_numbers else 1, "could not parse the numbers")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        starts = np.cumsum([len(line.split()) for line in face_lines])
        row = int(np.searchsorted(starts, bad, side="right"))
        raise LabelFileError(path, face_numbers[row], "every number must be finite (no nan or inf)")
    return values


def _assemble(
    path: str,
    format: str,
    names: List[str],
    image_of_face: np.ndarray,
    targets: np.ndarray,
    sizes: np.ndarray,
    face_numbers: np.ndarray,
) -> Annotations:
    kept = (sizes > 0).all(axis=1)
    _check_trainable(path, targets, kept, face_numbers)
    image_of_face = image_of_face[kept]
    counts = np.bincount(image_of_face, minlength=len(names))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Annotations(
        path, format, names, offsets, np.ascontiguousarray(targets[kept]), face_numbers[kept], int((~kept).sum())
    )


def _check_trainable(path: str, targets: np.ndarray, kept: np.ndarray, face_numbers: np.ndarray) -> None:
    """Faces that parse but cannot train are errors naming their line: a coordinate
    beyond MAX_COORDINATE (or infinite in float32), or a box of positive size in the file
    that is empty in float32 (a width of 1e-7 at x = 100)."""
    in_range = len(targets) == 0 or (targets.max() <= MAX_COORDINATE and targets.min() >= -MAX_COORDINATE)
    coordinates = targets[:, :LABEL]
    too_large = np.zeros(len(targets), bool) if in_range else ~(np.abs(coordinates) <= MAX_COORDINATE).all(axis=1)
    empty = kept & ~((targets[:, 2] > targets[:, 0]) & (targets[:, 3] > targets[:, 1]))
    bad = np.flatnonzero(too_large | empty)
    if len(bad):
        row = int(bad[0])
        if too_large[row]:
            raise LabelFileError(
                path,
                int(face_numbers[row]),
                f"a coordinate beyond {MAX_COORDINATE:.0e} pixels (in float32: {coordinates[row].tolist()})",
            )
        raise LabelFileError(
            path,
            int(face_numbers[row]),
            f"the box is empty in float32 ({targets[row, :4].tolist()}): width or height too small for its position",
        )


def format_face_line(target: Sequence[float], score: float = 1.0, decimals: int = 2) -> str:
    """One face of a ``[15]`` target as a RetinaFace ``label.txt`` line (landmarks of a
    face labelled -1 are written as -1, visibility 0)."""
    x1, y1, x2, y2 = target[BOX]
    fields: List[float] = [x1, y1, x2 - x1, y2 - y1]
    if target[LABEL] < 0:
        fields += [-1.0] * 15
    else:
        points = target[LANDMARKS]
        for k in range(5):
            fields += [points[2 * k], points[2 * k + 1], 0.0]
    fields.append(score)
    return " ".join(f"{value:.{decimals}f}" for value in fields)
