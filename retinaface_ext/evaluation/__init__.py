"""Evaluation protocols."""

from .widerface import (
    SETTINGS,
    EvaluationResult,
    GroundTruth,
    evaluate,
    load_ground_truth,
    plot_pr_curves,
    read_prediction_dir,
    read_prediction_file,
    write_prediction_file,
)

__all__ = [
    "SETTINGS",
    "EvaluationResult",
    "GroundTruth",
    "evaluate",
    "load_ground_truth",
    "plot_pr_curves",
    "read_prediction_dir",
    "read_prediction_file",
    "write_prediction_file",
]
