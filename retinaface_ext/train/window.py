"""The training loop's host synchronisation, once every ``--log-every`` steps instead of
every step: the steps' losses stay on the device until then, are read back together, and
are logged step by step as if each had been read at once. A loss that is not finite is
found there; the state of the last check, kept on the device (model, optimizer, schedule
and loss scale), is what a run stopped by it saves, so that the saved weights are good."""

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import torch

#: The default of ``--log-every``: steps between two reads of the losses.
LOG_EVERY = 10


@dataclass
class PendingStep:
    """A step whose losses are still on the device, with what the host knew of it."""

    step: int
    losses: torch.Tensor  # [3]: loss_l, loss_c, loss_landm
    logged: Dict[str, float] = field(default_factory=dict)  # lr, images_per_s, data_wait


class StepWindow:
    """The steps since the last check, and the state at that check."""

    def __init__(self, every: int):
        self.every = every
        self.pending: List[PendingStep] = []
        self.checked: Dict[str, object] = {}

    def add(self, step: int, losses: torch.Tensor, **logged: float) -> None:
        self.pending.append(PendingStep(step, losses.detach(), logged))

    def due(self) -> bool:
        return len(self.pending) >= self.every

    def read_back(self) -> List[Tuple[PendingStep, np.ndarray]]:
        """The pending steps with their losses on the host (one copy for all of them);
        the window is empty afterwards."""
        if not self.pending:
            return []
        values = torch.stack([p.losses for p in self.pending]).float().cpu().numpy()
        steps, self.pending = self.pending, []
        return list(zip(steps, values))

    def remember(self, trainer) -> None:
        """Keeps the trainer's state as it is now (device copies, no synchronisation)."""
        self.checked = {
            "model": _cloned(trainer.model.state_dict()),
            "optimizer": _cloned(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
            "scaler": copy.deepcopy(trainer.scaler.state_dict()),
            "counters": (trainer.step, trainer.step_in_epoch),
        }

    def restore(self, trainer) -> int:
        """Puts the trainer back to the last check; returns that check's step."""
        trainer.model.load_state_dict(self.checked["model"])
        trainer.optimizer.load_state_dict(self.checked["optimizer"])
        trainer.scheduler.load_state_dict(self.checked["scheduler"])
        trainer.scaler.load_state_dict(self.checked["scaler"])
        trainer.step, trainer.step_in_epoch = self.checked["counters"]
        return trainer.step


def _cloned(state):
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: _cloned(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cloned(value) for value in state)
    return copy.deepcopy(state)
