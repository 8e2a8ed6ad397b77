"""Reading a text file of numbers (an annotation file) at numpy speed.

WIDER FACE's train labels hold 3.2 million numbers; ``float()`` on each costs about a
second on a small machine, and ``numpy.fromstring`` half of that. :func:`scan_lines`
parses plain decimals (an optional sign, digits, at most one point) as arrays: each
number's digits make an exact integer, divided once by a power of ten, which rounds
exactly as ``float()`` does. It works through the file in pieces of about a megabyte,
which keeps its temporaries in cache. Lines with anything else in them (image names,
``#`` headers, but also exponents or typos) are returned as text; a caller that finds
one where numbers belong re-reads the file line by line for an exact error.
"""

from typing import List, NamedTuple, Optional

import numpy as np

_SEPARATOR, _DIGIT, _POINT, _MINUS, _PLUS, _OTHER = range(6)
_CLASS = np.full(256, _OTHER, dtype=np.int8)
_CLASS[[ord(c) for c in " \t\r\v\f\n"]] = _SEPARATOR
_CLASS[ord("0") : ord("9") + 1] = _DIGIT
_CLASS[ord(".")] = _POINT
_CLASS[ord("-")] = _MINUS
_CLASS[ord("+")] = _PLUS
_MAX_DIGITS = 15  # integers of up to 15 digits, and sums of their parts, are exact in float64
_POWERS = 10.0 ** np.arange(_MAX_DIGITS + 1)
_PIECE = 1 << 20


class ScannedLines(NamedTuple):
    """``counts[i]``: how many numbers line i (0-based) holds, 0 for a blank or text
    line; ``values``: all of them in file order; ``text_lines``: the indices of the
    lines that hold something other than plain decimals, and ``texts`` their contents."""

    values: np.ndarray
    counts: np.ndarray
    text_lines: np.ndarray
    texts: List[str]


def newline_positions(data: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))


def scan_lines(data: bytes, newlines: Optional[np.ndarray] = None) -> Optional[ScannedLines]:
    """None when a number is malformed in a way only a line-by-line read can explain
    (two points, a sign inside, more than 15 digits). ``newlines``: the file's
    :func:`newline_positions`, where the caller has them."""
    chars = np.frombuffer(data, dtype=np.uint8)
    newlines = newline_positions(data) if newlines is None else newlines
    line_starts = np.concatenate([[0], newlines + 1])
    line_ends = np.concatenate([newlines, [len(chars)]])
    kind = _CLASS[chars]
    other = np.flatnonzero(kind == _OTHER)
    is_text = np.zeros(len(line_starts), dtype=bool)
    is_text[np.searchsorted(line_starts, other, side="right") - 1] = True
    text_lines = np.flatnonzero(is_text)
    if len(text_lines):
        kind[np.repeat(is_text, line_ends - line_starts + 1)[: len(chars)]] = _SEPARATOR
    texts = [data[line_starts[i] : line_ends[i]].decode("utf-8").strip() for i in text_lines]

    values, token_starts = [], []
    start = 0
    while start < len(chars):
        end = min(len(chars), start + _PIECE)
        if end < len(chars):  # pieces end at a line's end
            following = int(np.searchsorted(newlines, end))
            end = int(newlines[following]) + 1 if following < len(newlines) else len(chars)
        piece = _parse_piece(chars[start:end], kind[start:end])
        if piece is None:
            return None
        piece_values, piece_starts = piece
        values.append(piece_values)
        token_starts.append(piece_starts + start)
        start = end
    token_starts = np.concatenate(token_starts) if token_starts else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.searchsorted(token_starts, line_starts), append=len(token_starts))
    return ScannedLines(np.concatenate(values) if values else np.zeros(0), counts, text_lines, texts)


def _parse_piece(chars: np.ndarray, kind: np.ndarray):
    """Values and token start offsets of a piece holding separators and plain-decimal
    characters only; None if some token is not a plain decimal."""
    in_token = (kind != _SEPARATOR).view(np.int8)
    edges = np.diff(in_token, prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(starts) == 0:
        return np.zeros(0), starts
    signs = np.flatnonzero((kind == _MINUS) | (kind == _PLUS))
    signed = np.zeros(len(starts), dtype=bool)
    signed[np.searchsorted(starts, signs[np.isin(signs, starts)])] = True
    points = np.flatnonzero(kind == _POINT)
    point_token = np.searchsorted(starts, points, side="right") - 1
    point_count = np.bincount(point_token, minlength=len(starts))
    digit_count = ends - starts - point_count - signed
    if (
        signed.sum() != len(signs)
        or (point_count > 1).any()
        or (digit_count == 0).any()
        or (digit_count > _MAX_DIGITS).any()
    ):
        return None
    # Each digit's place in the integer its token's digits make, the point ignored.
    digits_to_end = np.cumsum(digit_count)
    place = np.repeat(digits_to_end, digit_count) - np.arange(1, digits_to_end[-1] + 1)
    contributions = (chars[kind == _DIGIT] - np.uint8(ord("0"))) * _POWERS[place]
    mantissa = np.add.reduceat(contributions, digits_to_end - digit_count)
    fraction_digits = np.zeros(len(starts), dtype=np.int64)
    fraction_digits[point_token] = ends[point_token] - points - 1
    values = mantissa / _POWERS[fraction_digits]
    values[chars[starts] == ord("-")] *= -1
    return values, starts
