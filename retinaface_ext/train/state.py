"""Training checkpoints (whole or not at all, loadable with ``weights_only=True``), the
random states they carry, and the run folder's JSON-lines log."""

import io
import json
import os
import random
import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..files import atomic_write_bytes, atomic_write_text

FORMAT = "retinaface_ext.train"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def fit_optimizer_to_run(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """A loaded optimizer state as this run steps: ``load_state_dict`` takes the saved
    groups' ``fused`` (a CPU checkpoint on CUDA would lose the fused update, and with
    fp16's gradient scaler fail at its first step), and momentum buffers in their
    parameters' memory format (a run resumed with another ``--channels-last``)."""
    for group in optimizer.param_groups:
        group["fused"] = fused
    for parameter, state in optimizer.state.items():
        buffer = state.get("momentum_buffer")
        if isinstance(buffer, torch.Tensor) and buffer.stride() != parameter.stride():
            state["momentum_buffer"] = torch.empty_like(parameter).copy_(buffer)


def random_states() -> Dict[str, Any]:
    """Python's, numpy's (legacy global), torch's and every CUDA device's generator, in
    types that ``torch.load(weights_only=True)`` accepts."""
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_states(states: Dict[str, Any]) -> None:
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])


def save_checkpoint(path: str, **content) -> None:
    """``content`` with the format marker, serialised in memory, then written to a
    temporary file, fsynced and renamed over ``path``: a crash leaves the old file or
    the new one, never a part."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "saved_at": time.time(), **content}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


#: What a training checkpoint holds, and the type of each part.
PARTS = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "epoch": int,
    "step": int,
    "step_in_epoch": int,
    "best_ap": float,
    "metrics": dict,
    "rng": dict,
    "args": dict,
    "backbone": str,
    "dcn": bool,
}
RANDOM_STATES = ("python", "numpy", "torch", "cuda")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only=True``); ValueError
    naming the file when it is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path}: not a retinaface_ext training checkpoint (to start from weights, use --weights)")
    return checkpoint


def load_training_checkpoint(path: str, required_args=()) -> Dict[str, Any]:
    """:func:`load_checkpoint`, with every part of PARTS of its type and ``required_args``
    recorded; ValueError naming the file and the part otherwise."""
    checkpoint = load_checkpoint(path)
    for key, kind in PARTS.items():
        value = checkpoint.get(key)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise ValueError(
                f"{path}: a damaged training checkpoint: {key!r} is "
                f"{'missing' if key not in checkpoint else type(value).__name__ + ' ' + repr(value)[:40]}, "
                f"expected {'a count' if kind is int else kind.__name__}"
            )
    missing = [f"rng.{key}" for key in RANDOM_STATES if key not in checkpoint["rng"]]
    missing += [f"args.{key}" for key in required_args if key not in checkpoint["args"]]
    if missing:
        raise ValueError(f"{path}: a damaged training checkpoint: {', '.join(missing)} missing")
    return checkpoint


def prepare_run_folder(out: str, exist_ok: bool, continuing: bool) -> str:
    """``out``, created; an earlier run there is refused unless ``exist_ok`` or
    ``continuing`` it (resuming from a checkpoint in ``out`` itself: a checkpoint from
    elsewhere does not make another run's files ours to write over)."""
    out = os.path.abspath(out)
    if os.path.isfile(out):
        raise FileExistsError(f"--out {out} is a file")
    earlier = os.path.isdir(out) and any(
        os.path.exists(os.path.join(out, name)) for name in (LAST, BEST, "log.jsonl", "args.json")
    )
    if earlier and not (exist_ok or continuing):
        raise FileExistsError(
            f"--out {out} holds an earlier run; pass --exist-ok to write into it, "
            f"--resume auto to continue it, or choose another folder"
        )
    os.makedirs(out, exist_ok=True)
    return out


#: The loss parts a step logs, by these names (log.jsonl, TensorBoard, results.png).
LOSS_PARTS = ("loss_l", "loss_c", "loss_landm")


class JsonLog:
    """One JSON object per line, appended and flushed as they come (rank 0 only)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.handle = open(path, "a", encoding="utf-8") if path else None

    def write(self, **record) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record, default=float) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def write_args(out: str, arguments: Dict[str, Any]) -> None:
    atomic_write_text(os.path.join(out, "args.json"), json.dumps(arguments, indent=1, default=str))
