"""A training run's curves, for people rather than parsers: ``results.png`` beside
``log.jsonl`` (the three losses, the learning rate, images per second and the validation
APs by epoch), redrawn after each validation, and TensorBoard events with
``--tensorboard``."""

import io
import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Optional

from ..files import atomic_write_bytes
from .state import LOSS_PARTS

AP_KEYS = ("ap50", "easy", "medium", "hard")


def epoch_table(log_path: str) -> Dict[str, Dict[int, float]]:
    """Per quantity, its value by epoch, from a ``log.jsonl``: the mean of each loss over
    the epoch's steps, the last step's learning rate and images per second (the epoch's
    rate so far), and each validation's APs. A step or validation logged twice (a resumed
    run redoes what followed its checkpoint) counts once, as last logged. Lines that do
    not parse (a run killed while writing one) are skipped."""
    steps: Dict[int, dict] = {}
    validations: Dict[int, dict] = {}
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("event") == "step" and isinstance(record.get("step"), int):
                steps[record["step"]] = record
            elif record.get("event") == "validation" and isinstance(record.get("epoch"), int):
                validations[record["epoch"]] = record
    by_epoch: Dict[int, List[dict]] = defaultdict(list)
    for step in sorted(steps):
        by_epoch[steps[step].get("epoch")].append(steps[step])
    table: Dict[str, Dict[int, float]] = defaultdict(dict)
    for epoch, records in sorted(by_epoch.items()):
        for name in LOSS_PARTS:
            values = [float(r[name]) for r in records if isinstance(r.get(name), (int, float))]
            if values:
                table[name][epoch] = sum(values) / len(values)
        for name in ("lr", "images_per_s"):
            if isinstance(records[-1].get(name), (int, float)):
                table[name][epoch] = float(records[-1][name])
    for epoch, record in sorted(validations.items()):
        for name in AP_KEYS:
            if isinstance(record.get(name), (int, float)):
                table[name][epoch] = float(record[name])
    return dict(table)


def draw_results(log_path: str, png_path: str) -> bool:
    """Draw ``png_path`` from ``log_path`` (written whole or not at all); False, and
    nothing written, without matplotlib."""
    try:  # a Figure of its own draws with Agg: the caller's pyplot backend is left alone
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    table = epoch_table(log_path)
    figure = Figure(figsize=(13, 7), dpi=100, layout="constrained")
    panels = [
        ("box loss (smooth L1)", ["loss_l"]),
        ("classification loss", ["loss_c"]),
        ("landmark loss", ["loss_landm"]),
        ("learning rate", ["lr"]),
        ("images / s", ["images_per_s"]),
        ("validation AP", [name for name in AP_KEYS if name in table]),
    ]
    for index, (title, names) in enumerate(panels, 1):
        axes = figure.add_subplot(2, 3, index)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        for name in names:
            points = sorted((e, v) for e, v in table.get(name, {}).items() if math.isfinite(v))
            if points:
                label = "AP@0.5" if name == "ap50" else name
                axes.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=3, label=label)
        if title == "validation AP":
            axes.set_ylim(0, 1)
            if names:
                axes.legend(loc="lower right")
        if title == "learning rate" and table.get("lr") and min(table["lr"].values()) > 0:
            axes.set_yscale("log")  # the step schedule's x0.1 decays as equal steps
    figure.suptitle(f"{os.path.basename(os.path.dirname(os.path.abspath(log_path)))}: training curves")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(png_path, buffer.getvalue())
    return True


class TensorBoard:
    """TensorBoard events in ``folder`` (torch's SummaryWriter); ImportError in one line
    without the ``tensorboard`` package."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(folder)

    def scalars(self, prefix: str, values: Dict[str, Optional[float]], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
