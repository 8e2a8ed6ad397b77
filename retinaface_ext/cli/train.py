"""``retinaface train``: train RetinaFace. Its flags are made from the fields of
:class:`~retinaface_ext.train.options.TrainConfig` (their defaults, help and kinds)."""

import argparse
import dataclasses
import logging
import os
import sys

from ..train.options import SyntheticDefaults, TrainConfig
from .args import non_negative_int, positive_int, positive_number

VALIDATORS = {"count": positive_int, "count0": non_negative_int, "positive": positive_number, "number": float}


def command_train(args) -> int:
    from ..train import TrainingStopped, train

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        trainer = train(config_from_args(args))
    except TrainingStopped as stop:
        print(f"retinaface train: {stop}", file=sys.stderr)
        return stop.exit_status
    if trainer.is_main:
        ap = trainer.metrics.get("ap50")
        if ap is not None:
            print(f"AP@0.5: {ap:.3f}")
        print(f"checkpoints: {os.path.join(trainer.out, 'last.pt')}, {os.path.join(trainer.out, 'best.pt')}")
        if trainer.val_set is not None:
            print(f"detections on a validation image: {os.path.join(trainer.out, 'val_detections.jpg')}")
    return 0


def add_train_arguments(parser) -> None:
    """One flag per TrainConfig field that has a help text, in its group, with its default."""
    groups = {}
    for config_field in dataclasses.fields(TrainConfig):
        meta = config_field.metadata
        if "help" not in meta:
            continue
        group = meta["group"]
        if group is not None and group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups.get(group, parser)
        flag, default, help = f"--{config_field.name.replace('_', '-')}", config_field.default, meta["help"]
        if isinstance(default, bool):
            target.add_argument(flag, action="store_true", help=help)
            continue
        if meta["kind"] == "switch":
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
            continue
        shown = f"{help} ({default})" if default is not None else help
        target.add_argument(
            flag, type=VALIDATORS.get(meta["kind"], str), choices=meta["choices"], default=default, help=shown
        )
    data = groups["data"]
    data.add_argument(
        "--synthetic-train",
        type=positive_int,
        default=SyntheticDefaults.num_train,
        help=f"training images of the synthetic set ({SyntheticDefaults.num_train})",
    )
    data.add_argument(
        "--synthetic-val",
        type=non_negative_int,
        default=SyntheticDefaults.num_val,
        help=f"validation images of the synthetic set ({SyntheticDefaults.num_val})",
    )


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata}
    synthetic = SyntheticDefaults(num_train=args.synthetic_train, num_val=args.synthetic_val)
    return TrainConfig(synthetic=synthetic, **{name: getattr(args, name) for name in names})


def add_train_command(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train RetinaFace (with --dcn: deformable context modules)",
        description="Train RetinaFace on the built-in synthetic face set (the default: a stand-in for WIDER "
        "FACE, drawn on first use) or on a RetinaFace label.txt. A checkpoint is written atomically "
        "after every epoch (last.pt, best.pt by validation AP); Ctrl-C saves one and stops; "
        "--resume auto continues exactly. Under torchrun, one process per GPU (or CPU process).",
    )
    add_train_arguments(parser)
    parser.set_defaults(run=command_train)
