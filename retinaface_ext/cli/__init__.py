"""The ``retinaface`` command: detect faces (:mod:`.detect`), predict and evaluate WIDER FACE
val (:mod:`.widerface`, :mod:`.evaluate`), time (:mod:`.bench`), make and check training
data (:mod:`.data`), train (:mod:`.train`), export (:mod:`.export`), published weights (:mod:`.weights`).

User errors (wrong paths, unreadable images, a checkpoint of the other backbone, bad
option values, failed writes) print one line on stderr and exit with status 2;
``--debug`` shows the traceback instead. Nothing below this package imports it.
"""

import argparse
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..runtime import reuse_freed_memory

    reuse_freed_memory()
    try:
        return args.run(args)
    except (UserError, OSError, ValueError, ImportError) as error:
        if args.debug:
            raise
        print(f"retinaface {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
