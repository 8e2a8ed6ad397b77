"""``retinaface train``: train RetinaFace (flags: :mod:`retinaface_ext.train.options`)."""

import logging
import os
import sys

from .cli import non_negative_int, positive_int, positive_number


def command_train(args) -> int:
    from .train import TrainingStopped, train
    from .train.options import config_from_args

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
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


def add_train_command(commands) -> None:
    from .train.options import add_train_arguments

    parser = commands.add_parser(
        "train", help="train RetinaFace (with --dcn: deformable context modules)",
        description="Train RetinaFace on the built-in synthetic face set (the default: a stand-in for WIDER "
                    "FACE, drawn on first use) or on a RetinaFace label.txt. A checkpoint is written atomically "
                    "after every epoch (last.pt, best.pt by validation AP); Ctrl-C saves one and stops; "
                    "--resume auto continues exactly. Under torchrun, one process per GPU (or CPU process).")
    add_train_arguments(parser, positive_int, non_negative_int, positive_number)
    parser.set_defaults(run=command_train)
