"""The ``retinaface`` command: detect faces, predict and evaluate WIDER FACE val, time.

User errors (wrong paths, unreadable images, a checkpoint of the other backbone) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

import argparse
import json
import os
import sys
import time
from typing import List, Optional

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line."""


def _image_files(path: str, recursive: bool = False) -> List[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"no such image or folder: {path}")
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not recursive:
            break
    if not found:
        raise UserError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def _detector(args, **overrides):
    from .detect import Detector

    if not os.path.isfile(args.weights):
        raise UserError(f"checkpoint not found: {args.weights}")
    settings = dict(backbone=args.backbone, device=args.device, confidence_threshold=args.confidence,
                    nms_threshold=args.nms, keep_top_k=args.keep_top_k, batch_size=args.batch_size)
    settings.update(overrides)
    return Detector(args.weights, **settings)


def _progress(items, description, enabled=True):
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="image", disable=not enabled or len(items) < 2, file=sys.stderr)


def command_detect(args) -> int:
    import cv2

    from .draw import draw_detections
    from .images import read_image

    files = _image_files(args.input, args.recursive)
    detector = _detector(args, target_size=args.target_size, max_size=args.max_size)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    for path in _progress(files, "detect", enabled=bool(args.out)):
        image = read_image(path)
        faces = detector.detect(image).above(args.threshold)
        stem = os.path.splitext(os.path.basename(path))[0]
        record = {"image": path, "width": image.shape[1], "height": image.shape[0], "faces": faces.to_list()}
        if args.out:
            if not args.no_draw:
                cv2.imwrite(os.path.join(args.out, stem + ".jpg"), draw_detections(image, faces, args.threshold))
            if args.json:
                with open(os.path.join(args.out, stem + ".json"), "w") as handle:
                    json.dump(record, handle, indent=1)
        elif args.json:
            print(json.dumps(record))
        if not args.json or args.out:
            print(f"{path}: {len(faces)} faces", file=sys.stderr if args.out else sys.stdout)
    return 0


def command_widerface_predict(args) -> int:
    from .evaluation.widerface import write_prediction_file
    from .images import read_image

    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images} (expected WIDER_val/images/<event>/*.jpg)")
    events = sorted(e for e in os.listdir(args.images) if os.path.isdir(os.path.join(args.images, e)))
    jobs = [(event, os.path.join(args.images, event, f)) for event in events
            for f in sorted(os.listdir(os.path.join(args.images, event))) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not jobs:
        raise UserError(f"{args.images}: no <event>/<image> files")
    sizes = dict(target_size=None, max_size=None) if args.origin_size else \
        dict(target_size=args.target_size, max_size=args.max_size)
    detector = _detector(args, **sizes)
    started = time.perf_counter()
    for event, path in _progress(jobs, "widerface-predict"):
        faces = detector.detect(read_image(path))
        boxes = faces.boxes.cpu().numpy()
        rows = [[x1, y1, x2 - x1, y2 - y1, s] for (x1, y1, x2, y2), s in zip(boxes, faces.scores.cpu().numpy())]
        name = os.path.splitext(os.path.basename(path))[0]
        write_prediction_file(os.path.join(args.out, event, name + ".txt"), name, rows)
    elapsed = time.perf_counter() - started
    print(f"wrote {len(jobs)} prediction files to {args.out} in {elapsed:.1f} s")
    return 0


def command_eval(args) -> int:
    from .evaluation import widerface

    started = time.perf_counter()
    result = widerface.evaluate(args.pred, args.gt, iou_threshold=args.iou)
    print(result)
    if result.unknown_images:
        print(f"{result.unknown_images} predicted images are not in the ground truth (ignored)")
    if args.plot:
        widerface.plot_pr_curves(result, args.plot)
        print(f"PR curves: {args.plot}")
    print(f"evaluated in {time.perf_counter() - started:.1f} s")
    return 0


def _timed(fn, runs, device):
    import torch

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2], times[0]


def command_bench(args) -> int:
    import torch

    from .images import read_image

    if args.runs < 1:
        raise UserError(f"--runs must be at least 1, got {args.runs}")
    image = read_image(args.image)
    detector = _detector(args, target_size=args.target_size, max_size=args.max_size)
    prepared = detector._prepare(image, "image")[0][None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        outputs = detector.model(prepared)
        size = tuple(prepared.shape[-2:])
        stages = {
            "detect (all)": lambda: detector.detect(image),
            "forward": lambda: detector.model(prepared),
            "postprocess": lambda: detector.postprocess(*outputs, size),
        }
        for fn in stages.values():
            for _ in range(3):
                fn()
        print(f"{args.image}: {image.shape[1]}x{image.shape[0]}, network input {size[1]}x{size[0]}, "
              f"{detector.config.backbone} on {detector.device} ({torch.get_num_threads()} threads), {args.runs} runs")
        for name, fn in stages.items():
            median, best = _timed(fn, args.runs, detector.device)
            print(f"  {name:13s} median {median:8.2f} ms   min {best:8.2f} ms")
    return 0


def _add_detector_options(parser):
    parser.add_argument("--weights", required=True, help="Pytorch_Retinaface checkpoint (.pth)")
    parser.add_argument("--backbone", choices=["mobilenet0.25", "resnet50"], default=None,
                        help="insist on a backbone (default: read from the checkpoint)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--confidence", type=float, default=0.02, help="candidate score threshold (0.02)")
    parser.add_argument("--nms", type=float, default=0.4, help="NMS IoU threshold (0.4)")
    parser.add_argument("--keep-top-k", type=int, default=750, help="detections kept per image (750)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinaface", description="Detect faces and landmarks with RetinaFace; predict and evaluate WIDER FACE val.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = commands.add_parser("detect", help="detect faces in an image or a folder of images",
                                 description="Detect faces and their 5 landmarks.")
    detect.add_argument("input", metavar="IMAGE_OR_DIR")
    _add_detector_options(detect)
    detect.add_argument("--threshold", type=float, default=0.6, help="score to draw and report a face (0.6)")
    detect.add_argument("--out", help="folder for annotated images (and JSON with --json)")
    detect.add_argument("--json", action="store_true", help="write <image>.json per image (stdout without --out)")
    detect.add_argument("--no-draw", action="store_true", help="with --out: do not write annotated images")
    detect.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    detect.add_argument("--target-size", type=int, default=None, help="resize the short side to this")
    detect.add_argument("--max-size", type=int, default=None, help="cap the long side at this")
    detect.set_defaults(run=command_detect)

    predict = commands.add_parser("widerface-predict", help="predict WIDER FACE val into the standard folder",
                                  description="Run the detector over WIDER_val/images/<event>/*.jpg and write "
                                              "<out>/<event>/<image>.txt (x y w h score per face).")
    _add_detector_options(predict)
    predict.add_argument("--images", required=True, help="WIDER_val/images")
    predict.add_argument("--out", required=True, help="prediction folder to write")
    sizes = predict.add_mutually_exclusive_group()
    sizes.add_argument("--origin-size", action="store_true", default=True,
                       help="test at the original size (the default, as Pytorch_Retinaface)")
    sizes.add_argument("--target-size", type=int, default=None,
                       help="resize the short side to this (the multi-scale protocol uses 1600)")
    predict.add_argument("--max-size", type=int, default=2150, help="with --target-size: cap the long side (2150)")
    predict.set_defaults(run=command_widerface_predict)

    evaluate = commands.add_parser("eval", help="WIDER FACE val AP (easy, medium, hard)",
                                   description="Evaluate a prediction folder against the official val ground truth.")
    evaluate.add_argument("--pred", required=True, help="prediction folder (<event>/<image>.txt)")
    evaluate.add_argument("--gt", required=True, help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    evaluate.add_argument("--iou", type=float, default=0.5, help="IoU for a match (0.5)")
    evaluate.add_argument("--plot", help="write the PR curves to this PNG")
    evaluate.set_defaults(run=command_eval)

    bench = commands.add_parser("bench", help="time detection on one image",
                                description="Time the whole detect call, the forward pass and the "
                                            "post-processing (decode, filter, NMS) on one image.")
    bench.add_argument("image")
    _add_detector_options(bench)
    bench.add_argument("--runs", type=int, default=20, help="timed runs after 3 warm-up runs (20)")
    bench.add_argument("--target-size", type=int, default=None, help="resize the short side to this")
    bench.add_argument("--max-size", type=int, default=None, help="cap the long side at this")
    bench.set_defaults(run=command_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "target_size", None) is not None and hasattr(args, "origin_size"):
        args.origin_size = False
    from .runtime import reuse_freed_memory

    reuse_freed_memory()
    try:
        return args.run(args)
    except (UserError, FileNotFoundError, ValueError, ImportError) as error:
        if args.debug:
            raise
        print(f"retinaface {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
