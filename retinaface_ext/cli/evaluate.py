"""``retinaface eval``: WIDER FACE val AP (easy, medium, hard) of a prediction folder."""

import time

from .args import iou_fraction


def command_eval(args) -> int:
    from ..evaluation import widerface
    from ..evaluation.prediction_runs import check_prediction_folder

    started = time.perf_counter()
    result = widerface.evaluate(args.pred, args.gt, iou_threshold=args.iou, predicted_only=args.predicted_only)
    print(result)
    if result.unknown_images:
        print(f"{result.unknown_images} predicted images are not in the ground truth (ignored)")
    for warning in check_prediction_folder(args.pred):
        print(f"warning: {warning}")
    if args.plot:
        widerface.plot_pr_curves(result, args.plot)
        print(f"PR curves: {args.plot}")
    print(f"evaluated in {time.perf_counter() - started:.1f} s")
    return 0


def add_eval_command(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="WIDER FACE val AP (easy, medium, hard)",
        description="Evaluate a prediction folder against the official val ground truth.",
    )
    evaluate.add_argument("--pred", required=True, help="prediction folder (<event>/<image>.txt)")
    evaluate.add_argument(
        "--gt", required=True, help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat"
    )
    evaluate.add_argument("--iou", type=iou_fraction, default=0.5, help="IoU for a match, in (0, 1] (0.5)")
    evaluate.add_argument("--plot", help="write the PR curves to this PNG")
    evaluate.add_argument(
        "--predicted-only",
        action="store_true",
        help="count only the images that were predicted (a subset of the val set: the easy, medium "
        "and hard faces of those images); else the others count as finding nothing",
    )
    evaluate.set_defaults(run=command_eval)
