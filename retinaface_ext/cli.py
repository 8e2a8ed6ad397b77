"""The ``retinaface`` command: detect faces, predict and evaluate WIDER FACE val, time;
make and check training data (:mod:`retinaface_ext.cli_data`); train (:mod:`retinaface_ext.cli_train`).

User errors (wrong paths, unreadable images, a checkpoint of the other backbone, bad
option values, failed writes) print one line on stderr and exit with status 2;
``--debug`` shows the traceback instead.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import List, Optional, Tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: The long side of the WIDER FACE multi-scale protocol, used with --target-size.
PROTOCOL_MAX_SIZE = 2150


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- option values

def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def iou_fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected an IoU in (0, 1], got {text!r}")
    return value


# ---------------------------------------------------------------- shared steps

def _image_files(path: str, recursive: bool = False) -> Tuple[List[str], str]:
    """The image files to read and the folder their output names are relative to."""
    if os.path.isfile(path):
        return [path], os.path.dirname(path)
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
    return found, path


def _output_folder(path: str, option: str = "--out") -> str:
    """``path`` as a folder to write into: refused when it, or a folder above it, is a file."""
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        where = "is" if probe == os.path.abspath(path) else f"lies under {probe}, which is"
        raise UserError(f"{option} {path}: {where} a file, not a folder")
    return path


def _detector(args, **overrides):
    from .detect import Detector

    if not os.path.isfile(args.weights):
        raise UserError(f"checkpoint not found: {args.weights}")
    settings = dict(backbone=args.backbone, device=args.device, confidence_threshold=args.confidence,
                    nms_threshold=args.nms, keep_top_k=args.keep_top_k, batch_size=args.batch_size,
                    engine=args.engine)
    settings.update(overrides)
    return Detector(args.weights, **settings)


def _progress(total, description, enabled=True):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="image", disable=not enabled or total < 2, file=sys.stderr)


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------- commands

def command_detect(args) -> int:
    from .draw import draw_detections
    from .files import atomic_write_text, write_image

    _check_origin_size(args)
    files, root = _image_files(args.input, args.recursive)
    outputs = {}
    if args.out:
        _output_folder(args.out)
        inputs = {os.path.realpath(f) for f in files}
        for path in files:
            image_out = os.path.join(args.out, os.path.relpath(path, root))
            if os.path.realpath(image_out) in inputs and not args.no_draw:
                raise UserError(f"--out {args.out}: the annotated copy of {path} would overwrite it; "
                                f"choose another folder")
            outputs[path] = (image_out, image_out + ".json")
    crops = _align_outputs(args.align, files, root) if args.align else {}
    detector = _detector(args, target_size=args.target_size, max_size=args.max_size)
    with _progress(len(files), "detect", enabled=bool(args.out)) as progress:
        for chunk in _batches(files, args.batch_size):
            images = [detector.read_image(path) for path in chunk]
            for path, image, faces in zip(chunk, images, detector.detect(images, names=chunk)):
                faces = faces.above(args.threshold)
                record = {"image": path, "width": image.shape[1], "height": image.shape[0],
                          "faces": faces.to_list()}
                if args.out:
                    image_out, json_out = outputs[path]
                    if not args.no_draw:
                        write_image(image_out, draw_detections(image, faces, args.threshold))
                    if args.json:
                        atomic_write_text(json_out, json.dumps(record, indent=1) + "\n")
                elif args.json:
                    print(json.dumps(record))
                if args.align:
                    _write_crops(image, faces, crops[path])
                if not args.json or args.out:
                    progress.write(f"{path}: {len(faces)} faces", file=sys.stderr if args.out else sys.stdout)
                progress.update()
    return 0


def _align_outputs(folder, files, root):
    """Per input, the pattern of its crops under ``folder``: its path relative to the
    input folder, without extension, plus ``_face<k>`` and its extension. Refused before
    anything is written when a crop could overwrite an input."""
    import re

    _output_folder(folder, "--align")
    inputs = {os.path.realpath(f) for f in files}
    outputs = {}
    for path in files:
        stem, extension = os.path.splitext(os.path.relpath(path, root))
        prefix = os.path.join(folder, stem + "_face")
        outputs[path] = (prefix, extension)
        taken = re.compile(re.escape(os.path.realpath(prefix)) + r"\d+" + re.escape(extension) + "$")
        clash = next((other for other in inputs if taken.match(other)), None)
        if clash:
            raise UserError(f"--align {folder}: a crop of {path} would overwrite the input {clash}; "
                            f"choose another folder")
    return outputs


def _write_crops(image, faces, names):
    from .align import align_faces
    from .files import write_image

    prefix, extension = names
    if len(faces):
        for k, crop in enumerate(align_faces(image, faces.landmarks).crops):
            write_image(f"{prefix}{k}{extension}", crop)


def _check_origin_size(args):
    for option, value in (("--target-size", args.target_size), ("--max-size", args.max_size)):
        if args.origin_size and value is not None:
            raise UserError(f"--origin-size and {option} contradict each other")


def _prediction_sizes(args):
    _check_origin_size(args)
    if args.target_size is not None:
        return args.target_size, args.max_size if args.max_size is not None else PROTOCOL_MAX_SIZE
    return None, args.max_size  # original size, capped only when --max-size is given


def command_widerface_predict(args) -> int:
    from . import __version__
    from .evaluation.prediction_runs import PredictionRun, file_digest
    from .evaluation.widerface import write_prediction_file

    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images} (expected WIDER_val/images/<event>/*.jpg)")
    events = sorted(e for e in os.listdir(args.images) if os.path.isdir(os.path.join(args.images, e)))
    jobs = [(event, os.path.join(args.images, event, f)) for event in events
            for f in sorted(os.listdir(os.path.join(args.images, event))) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not jobs:
        raise UserError(f"{args.images}: no <event>/<image> files")
    target_size, max_size = _prediction_sizes(args)
    _output_folder(args.out)
    detector = _detector(args, target_size=target_size, max_size=max_size)
    run = PredictionRun(args.out, {
        "weights_sha256": file_digest(args.weights), "backbone": detector.config.backbone,
        "target_size": target_size, "max_size": max_size, "confidence": args.confidence, "nms": args.nms,
        "keep_top_k": args.keep_top_k, "images": os.path.realpath(args.images), "retinaface_ext": __version__,
    })
    run.start(args.overwrite)
    started = time.perf_counter()
    try:
        with _progress(len(jobs), "widerface-predict") as progress:
            for chunk in _batches(jobs, args.batch_size):
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


def command_eval(args) -> int:
    from .evaluation import widerface
    from .evaluation.prediction_runs import check_prediction_folder

    started = time.perf_counter()
    result = widerface.evaluate(args.pred, args.gt, iou_threshold=args.iou)
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

    detector = _detector(args, target_size=args.target_size, max_size=args.max_size)
    image = detector.read_image(args.image)
    layout = torch.channels_last if detector.channels_last else torch.contiguous_format
    prepared = detector._prepare(image, "image").tensor[None].contiguous(memory_format=layout)
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
              f"{detector.config.backbone} with {detector.engine} on {detector.device} ({torch.get_num_threads()} "
              f"threads), {args.runs} runs")
        for name, fn in stages.items():
            median, best = _timed(fn, args.runs, detector.device)
            print(f"  {name:13s} median {median:8.2f} ms   min {best:8.2f} ms")
    return 0


# ---------------------------------------------------------------- the parser

def _add_detector_options(parser, batch_size=1):
    parser.add_argument("--weights", required=True,
                        help="Pytorch_Retinaface checkpoint (.pth), or a network exported by 'retinaface export'")
    parser.add_argument("--backbone", choices=["mobilenet0.25", "resnet50"], default=None,
                        help="insist on a backbone (default: read from the checkpoint)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--confidence", type=fraction, default=0.02, help="candidate score threshold (0.02)")
    parser.add_argument("--nms", type=fraction, default=0.4, help="NMS IoU threshold (0.4)")
    parser.add_argument("--keep-top-k", type=positive_int, default=750, help="detections kept per image (750)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"images per forward pass; similar sizes share one ({batch_size})")
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default=None,
                        help="run the network with PyTorch or onnxruntime (CPU; exported once, cached); default: "
                             "torch, onnxruntime for an .onnx file")


def _add_size_options(parser, max_size_help):
    sizes = parser.add_argument_group("image size (default: the original size)")
    sizes.add_argument("--origin-size", action="store_true", help="test at the original size (the default)")
    sizes.add_argument("--target-size", type=positive_number, default=None, help="resize the short side to this")
    sizes.add_argument("--max-size", type=positive_number, default=None, help=max_size_help)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="retinaface", description="Detect faces and landmarks with RetinaFace; predict and evaluate WIDER FACE "
                                       "val; make and check training data; train.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = commands.add_parser("detect", help="detect faces in an image or a folder of images",
                                 description="Detect faces and their 5 landmarks. With --out, each input's "
                                             "annotated copy keeps its path relative to IMAGE_OR_DIR and its "
                                             "file name (JSON: the file name plus .json); inputs are never "
                                             "overwritten.")
    detect.add_argument("input", metavar="IMAGE_OR_DIR")
    _add_detector_options(detect)
    detect.add_argument("--threshold", type=fraction, default=0.6, help="score to draw and report a face (0.6)")
    detect.add_argument("--out", help="folder for annotated images (and JSON with --json)")
    detect.add_argument("--json", action="store_true", help="write <image>.json per image (stdout without --out)")
    detect.add_argument("--no-draw", action="store_true", help="with --out: do not write annotated images")
    detect.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    detect.add_argument("--align", metavar="DIR", default=None,
                        help="write one aligned 112x112 crop per face (ArcFace template) into DIR")
    _add_size_options(detect, "cap the long side at this (alone: shrink only larger images)")
    detect.set_defaults(run=command_detect)

    predict = commands.add_parser("widerface-predict", help="predict WIDER FACE val into the standard folder",
                                  description="Run the detector over WIDER_val/images/<event>/*.jpg and write "
                                              "<out>/<event>/<image>.txt (x y w h score per face). The run's "
                                              "settings are recorded in <out>/retinaface-predict.json; a folder "
                                              "holding another run's predictions is refused without --overwrite.")
    _add_detector_options(predict)
    predict.add_argument("--images", required=True, help="WIDER_val/images")
    predict.add_argument("--out", required=True, help="prediction folder to write")
    predict.add_argument("--overwrite", action="store_true",
                         help="delete the prediction files of another run in --out first")
    _add_size_options(predict, f"cap the long side (with --target-size: default {PROTOCOL_MAX_SIZE}, the "
                               f"multi-scale protocol's)")
    predict.set_defaults(run=command_widerface_predict)

    evaluate = commands.add_parser("eval", help="WIDER FACE val AP (easy, medium, hard)",
                                   description="Evaluate a prediction folder against the official val ground truth.")
    evaluate.add_argument("--pred", required=True, help="prediction folder (<event>/<image>.txt)")
    evaluate.add_argument("--gt", required=True, help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    evaluate.add_argument("--iou", type=iou_fraction, default=0.5, help="IoU for a match, in (0, 1] (0.5)")
    evaluate.add_argument("--plot", help="write the PR curves to this PNG")
    evaluate.set_defaults(run=command_eval)

    bench = commands.add_parser("bench", help="time detection on one image",
                                description="Time the whole detect call, the forward pass and the "
                                            "post-processing (decode, filter, NMS) on one image.")
    bench.add_argument("image")
    _add_detector_options(bench)
    bench.add_argument("--runs", type=positive_int, default=20, help="timed runs after 3 warm-up runs (20)")
    bench.add_argument("--target-size", type=positive_number, default=None, help="resize the short side to this")
    bench.add_argument("--max-size", type=positive_number, default=None, help="cap the long side at this")
    bench.set_defaults(run=command_bench)

    from .cli_data import add_data_commands
    from .cli_export import add_export_command
    from .cli_train import add_train_command

    add_data_commands(commands)
    add_train_command(commands)
    add_export_command(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import reuse_freed_memory

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
