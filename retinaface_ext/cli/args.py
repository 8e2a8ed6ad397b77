"""What every command shares: :class:`UserError` (a mistake reported in one line) and the
argument validators, whose messages name the expected value."""

import argparse
import math


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- option values


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def iou_fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected an IoU in (0, 1], got {text!r}")
    return value


def scales(text: str):
    """``--scales``: ``auto`` or factors > 0 separated by commas (``1,2.5``)."""
    if text.strip() == "auto":
        return "auto"
    values = []
    for part in text.split(","):
        value = _number(part.strip()) if part.strip() else None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"expected 'auto' or factors > 0 separated by commas, got {text!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a factor appears twice in {text!r}")
    return tuple(values)


def checkpoint_path(text: str, option: str = "--weights") -> str:
    """A checkpoint file, or the name of published weights (fetched and checked, see
    :mod:`retinaface_ext.models.weights`), as the path of a checked file."""
    import os

    from ..models import weights

    if weights.is_published_name(text):
        return weights.fetch(text)
    if not os.path.isfile(text):
        raise UserError(
            f"{option} {text}: no such checkpoint file (published weights by name: {', '.join(weights.PUBLISHED)})"
        )
    return text
