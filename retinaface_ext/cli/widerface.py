"""``retinaface widerface-predict``: WIDER FACE val predictions in the standard folder."""

import os
import time

from .args import UserError
from .shared import (
    PROTOCOL_MAX_SIZE,
    add_detector_options,
    add_size_options,
    make_detector,
    output_folder,
    prediction_sizes,
    progress_bar,
    weights_path,
)


def command_widerface_predict(args) -> int:
    from .._version import __version__
    from ..evaluation.predict import predict_widerface, widerface_images
    from ..evaluation.prediction_runs import PredictionRun, file_digest
    from ..evaluation.widerface import write_prediction_file

    try:
        images = widerface_images(args.images)
    except ValueError as error:
        raise UserError(str(error)) from None
    target_size, max_size = prediction_sizes(args)
    output_folder(args.out)
    weights = weights_path(args)
    detector = make_detector(args, weights, target_size=target_size, max_size=max_size)
    run = PredictionRun(
        args.out,
        {
            "weights_sha256": file_digest(weights),
            "backbone": detector.config.backbone,
            "target_size": target_size,
            "max_size": max_size,
            "confidence": args.score_threshold,
            "nms": args.nms_threshold,
            "top_k": args.top_k,
            "keep_top_k": args.keep_top_k,
            "images": os.path.realpath(args.images),
            "retinaface_ext": __version__,
            **level_settings(args),
        },
    )
    run.start(args.overwrite)
    started = time.perf_counter()
    try:
        with progress_bar(len(images), "widerface-predict") as progress:
            for event, name, rows in predict_widerface(detector, images, args.batch_size):
                write_prediction_file(os.path.join(args.out, event, name + ".txt"), name, rows)
                run.add(f"{event}/{name}.txt")
                progress.update()
    except BaseException:
        run.save("interrupted")
        raise
    run.save("complete")
    elapsed = time.perf_counter() - started
    print(f"wrote {len(images)} prediction files to {args.out} in {elapsed:.1f} s")
    return 0


def level_settings(args) -> dict:
    """--scales, --flip and --merge for the run's record, only where they are not the
    single pass (a folder of one-pass predictions made before they existed stays the
    same run)."""
    if args.scales == (1.0,) and not args.flip:
        return {}
    return {
        "scales": args.scales if args.scales == "auto" else list(args.scales),
        "flip": args.flip,
        "merge": args.merge,
    }


def add_widerface_predict_command(commands) -> None:
    predict = commands.add_parser(
        "widerface-predict",
        help="predict WIDER FACE val into the standard folder",
        description="Run the detector over WIDER_val/images/<event>/*.jpg and write "
        "<out>/<event>/<image>.txt (x y w h score per face). The run's "
        "settings are recorded in <out>/retinaface-predict.json; a folder "
        "holding another run's predictions is refused without --overwrite.",
    )
    add_detector_options(predict)
    predict.add_argument("--images", required=True, help="WIDER_val/images")
    predict.add_argument("--out", required=True, help="prediction folder to write")
    predict.add_argument(
        "--overwrite", action="store_true", help="delete the prediction files of another run in --out first"
    )
    add_size_options(
        predict, f"cap the long side (with --target-size: default {PROTOCOL_MAX_SIZE}, the multi-scale protocol's)"
    )
    predict.set_defaults(run=command_widerface_predict)
