"""Training RetinaFace (with or without DCN): :class:`Trainer`, :func:`train`, and the
``retinaface train`` / ``python -m retinaface_ext.train`` command (torchrun-ready)."""

from .options import TrainConfig
from .trainer import Trainer, TrainingStopped


def train(config: TrainConfig, **trainer_options):
    """Runs ``Trainer(config).fit()``; returns the trainer (its ``metrics``, ``out``)."""
    trainer = Trainer(config, **trainer_options)
    trainer.fit()
    return trainer


__all__ = ["TrainConfig", "Trainer", "TrainingStopped", "train"]
