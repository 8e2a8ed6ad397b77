"""``retinaface detect``: faces and landmarks in images or folders, drawn, as JSON, or as
aligned crops."""

import json
import os
import sys

from .args import UserError, fraction
from .shared import (
    add_detector_options,
    add_size_options,
    batches,
    check_origin_size,
    image_files,
    make_detector,
    output_folder,
    progress_bar,
)


def command_detect(args) -> int:
    from ..draw import draw_detections
    from ..files import atomic_write_text, write_image

    check_origin_size(args)
    files, root = image_files(args.input, args.recursive)
    outputs = {}
    if args.out:
        output_folder(args.out)
        inputs = {os.path.realpath(f) for f in files}
        for path in files:
            image_out = os.path.join(args.out, os.path.relpath(path, root))
            if os.path.realpath(image_out) in inputs and not args.no_draw:
                raise UserError(
                    f"--out {args.out}: the annotated copy of {path} would overwrite it; choose another folder"
                )
            outputs[path] = (image_out, image_out + ".json")
    crops = align_outputs(args.align, files, root) if args.align else {}
    detector = make_detector(args, target_size=args.target_size, max_size=args.max_size)
    with progress_bar(len(files), "detect", enabled=bool(args.out)) as progress:
        for chunk in batches(files, args.batch_size):
            images = [detector.read_image(path) for path in chunk]
            for path, image, faces in zip(chunk, images, detector.detect(images, names=chunk)):
                faces = faces.above(args.threshold)
                record = {"image": path, "width": image.shape[1], "height": image.shape[0], "faces": faces.to_list()}
                if args.out:
                    image_out, json_out = outputs[path]
                    if not args.no_draw:
                        write_image(image_out, draw_detections(image, faces, args.threshold))
                    if args.json:
                        atomic_write_text(json_out, json.dumps(record, indent=1) + "\n")
                elif args.json:
                    print(json.dumps(record))
                if args.align:
                    write_crops(image, faces, crops[path])
                if not args.json or args.out:
                    progress.write(f"{path}: {len(faces)} faces", file=sys.stderr if args.out else sys.stdout)
                progress.update()
    return 0


def align_outputs(folder, files, root):
    """Per input, the pattern of its crops under ``folder``: its path relative to the
    input folder, without extension, plus ``_face<k>`` and its extension. Refused before
    anything is written when a crop could overwrite an input."""
    import re

    output_folder(folder, "--align")
    inputs = {os.path.realpath(f) for f in files}
    outputs = {}
    for path in files:
        stem, extension = os.path.splitext(os.path.relpath(path, root))
        prefix = os.path.join(folder, stem + "_face")
        outputs[path] = (prefix, extension)
        taken = re.compile(re.escape(os.path.realpath(prefix)) + r"\d+" + re.escape(extension) + "$")
        clash = next((other for other in inputs if taken.match(other)), None)
        if clash:
            raise UserError(
                f"--align {folder}: a crop of {path} would overwrite the input {clash}; choose another folder"
            )
    return outputs


def write_crops(image, faces, names):
    from ..align import align_faces
    from ..files import write_image

    prefix, extension = names
    if len(faces):
        for k, crop in enumerate(align_faces(image, faces.landmarks).crops):
            write_image(f"{prefix}{k}{extension}", crop)


def add_detect_command(commands) -> None:
    detect = commands.add_parser(
        "detect",
        help="detect faces in an image or a folder of images",
        description="Detect faces and their 5 landmarks. With --out, each input's "
        "annotated copy keeps its path relative to IMAGE_OR_DIR and its "
        "file name (JSON: the file name plus .json); inputs are never "
        "overwritten.",
    )
    detect.add_argument("input", metavar="IMAGE_OR_DIR")
    add_detector_options(detect)
    detect.add_argument("--threshold", type=fraction, default=0.6, help="score to draw and report a face (0.6)")
    detect.add_argument("--out", help="folder for annotated images (and JSON with --json)")
    detect.add_argument("--json", action="store_true", help="write <image>.json per image (stdout without --out)")
    detect.add_argument("--no-draw", action="store_true", help="with --out: do not write annotated images")
    detect.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    detect.add_argument(
        "--align",
        metavar="DIR",
        default=None,
        help="write one aligned 112x112 crop per face (ArcFace template) into DIR",
    )
    add_size_options(detect, "cap the long side at this (alone: shrink only larger images)")
    detect.set_defaults(run=command_detect)
