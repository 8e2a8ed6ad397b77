"""The ``retinaface`` command: detect faces (:mod:`.detect`), predict and evaluate WIDER FACE
val (:mod:`.widerface`, :mod:`.evaluate`), time (:mod:`.bench`), make and check training
data (:mod:`.data`), train (:mod:`.train`), export (:mod:`.export`), published weights (:mod:`.weights`).

User errors (wrong paths, unreadable images, a checkpoint of the other backbone, bad
option values, failed writes) print one line on stderr and exit with status 2;
``--debug`` shows the traceback instead. Nothing below this package imports it.
"""

import argparse
import logging
import signal
import sys
from typing import List, Optional

from .args import OneLineParser, UserError
from .bench import add_bench_command
from .data import add_data_commands
from .detect import add_detect_command
from .evaluate import add_eval_command
from .export import add_export_command
from .train import add_train_command
from .weights import add_weights_command
from .widerface import add_widerface_predict_command


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="retinaface",
        description="Detect faces and landmarks with RetinaFace; predict and evaluate WIDER FACE "
        "val; make and check training data; train.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        add_detect_command,
        add_widerface_predict_command,
        add_eval_command,
        add_bench_command,
        add_data_commands,
        add_train_command,
        add_export_command,
        add_weights_command,
    ):
        add(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it cleans up as after Ctrl-C
    (temporary files removed, partial results kept where the command keeps them)."""

    exit_status = 143


def _terminate(number, frame):
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..runtime import reuse_freed_memory

    reuse_freed_memory()
    # torch's "No CUDA runtime is found, using CUDA_HOME=..." when inductor compiles on a
    # machine without a GPU: noise for this command, which builds no extension.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        return args.run(args)
    except (UserError, OSError, ValueError, ImportError) as error:
        if args.debug:
            raise
        print(f"retinaface {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print("terminated" if isinstance(stop, Terminated) else "interrupted", file=sys.stderr)
        return getattr(stop, "exit_status", 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
