"""``retinaface widerface-predict``: WIDER FACE val predictions in the standard folder."""

import os
import time

from .args import UserError
from .shared import (
    IMAGE_EXTENSIONS,
    PROTOCOL_MAX_SIZE,
    add_detector_options,
    add_size_options,
    batches,
    make_detector,
    output_folder,
    prediction_sizes,
    progress_bar,
)


def command_widerface_predict(args) -> int:
    from .._version import __version__
    from ..evaluation.prediction_runs import PredictionRun, file_digest
    from ..evaluation.widerface import write_prediction_file

    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images} (expected WIDER_val/images/<event>/*.jpg)")
    events = sorted(e for e in os.listdir(args.images) if os.path.isdir(os.path.join(args.images, e)))
    jobs = [
        (event, os.path.join(args.images, event, f))
        for event in events
        for f in sorted(os.listdir(os.path.join(args.images, event)))
        if f.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not jobs:
        raise UserError(f"{args.images}: no <event>/<image> files")
    target_size, max_size = prediction_sizes(args)
    output_folder(args.out)
    detector = make_detector(args, target_size=target_size, max_size=max_size)
    run = PredictionRun(
        args.out,
        {
            "weights_sha256": file_digest(args.weights),
            "backbone": detector.config.backbone,
            "target_size": target_size,
            "max_size": max_size,
            "confidence": args.score_threshold,
            "nms": args.nms_threshold,
            "top_k": args.top_k,
            "keep_top_k": args.keep_top_k,
            "images": os.path.realpath(args.images),
            "retinaface_ext": __version__,
        },
    )
    run.start(args.overwrite)
    started = time.perf_counter()
    try:
        with progress_bar(len(jobs), "widerface-predict") as progress:
            for chunk in batches(jobs, args.batch_size):
                images = [detector.read_image(path) for _, path in chunk]
                for (event, path), faces in zip(chunk, detector.detect(images, names=[path for _, path in chunk])):
                    boxes, scores = faces.boxes.cpu().numpy(), faces.scores.cpu().numpy()
                    rows = [[x1, y1, x2 - x1, y2 - y1, s] for (x1, y1, x2, y2), s in zip(boxes, scores)]
                    name = os.path.splitext(os.path.basename(path))[0]
                    write_prediction_file(os.path.join(args.out, event, name + ".txt"), name, rows)
                    run.add(f"{event}/{name}.txt")
                progress.update(len(chunk))
    except BaseException:
        run.save("interrupted")
        raise
    run.save("complete")
    elapsed = time.perf_counter() - started
    print(f"wrote {len(jobs)} prediction files to {args.out} in {elapsed:.1f} s")
    return 0


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
