"""``retinaface detect``: faces and landmarks in images or folders, drawn, as JSON, or as
aligned crops."""

import json
import os
import sys

from .args import UserError, fraction, positive_int
from .detect_ray import add_ray_options
from .shared import (
    add_detector_options,
    add_size_options,
    check_origin_size,
    image_files,
    make_detector,
    output_folder,
    progress_bar,
    refuse_existing,
)


def command_detect(args) -> int:
    from ..draw import draw_detections
    from ..files import atomic_write_text, write_image
    from ..images import display_path
    from .detect_ray import command_detect_ray
    from .video import command_detect_video, video_source

    if args.ray is not None or args.parquet:
        return command_detect_ray(args)
    source = video_source(args.input)
    if source is not None:
        return command_detect_video(args, source)
    check_origin_size(args)
    files, root = image_files(args.input, args.recursive)
    run = folder_run(args, files, root)
    files = run.files
    outputs = {}
    if args.out:
        output_folder(args.out)
        inputs = {os.path.realpath(f) for f in files}
        for path in files:
            image_out = os.path.join(args.out, os.path.relpath(path, root))
            if os.path.realpath(image_out) in inputs and not args.no_draw:
                raise UserError(
                    f"--out {args.out}: the annotated copy of {display_path(path)} would overwrite it; "
                    "choose another folder"
                )
            outputs[path] = (image_out, image_out + ".json")
        images_out = [] if args.no_draw else [image_out for image_out, _ in outputs.values()]
        jsons_out = [json_out for _, json_out in outputs.values()] if args.json else []
        refuse_existing(images_out + jsons_out, args.overwrite)
    crops = align_outputs(args.align, files, root, args.overwrite) if args.align else {}
    detector = make_detector(args, target_size=args.target_size, max_size=args.max_size)
    unreadable = 0
    with progress_bar(len(files), "detect", enabled=bool(args.out or run.results)) as progress:
        for item in run.detect(detector, args.threshold, args.batch_size, args.workers):
            progress.update()
            if item.error is not None:
                unreadable += 1
                continue
            path, image, faces = item.path, item.image, item.faces
            record = {"image": path, "width": image.shape[1], "height": image.shape[0], "faces": faces.to_list()}
            if args.out:
                image_out, json_out = outputs[path]
                if not args.no_draw:
                    write_image(image_out, draw_detections(image, faces, args.threshold))
                if args.json:
                    atomic_write_text(json_out, json.dumps(record, indent=1) + "\n")
            elif args.json:
                print(json.dumps(record), flush=True)
            if args.align:
                write_crops(image, faces, crops[path])
            if run.results is None and (not args.json or args.out):
                progress.write(f"{display_path(path)}: {len(faces)} faces", file=sys.stderr if args.out else sys.stdout)
    if run.results is not None:
        note = f" ({unreadable} could not be read: their lines hold an 'error')" if unreadable else ""
        print(f"{display_path(run.results)}: {len(files)} images written{note}", file=sys.stderr)
    return 0


def folder_run(args, files, root):
    """The library's :class:`~retinaface_ext.inference.folders.FolderRun` for the command's
    options (the shard: --shard, else torchrun's RANK/WORLD_SIZE), its notes printed."""
    from ..inference.folders import FolderRun
    from ..inference.runs import parse_shard, shard_from_environment

    if args.jsonl and os.path.isdir(args.jsonl):
        raise UserError(f"--jsonl {args.jsonl}: is a folder, not a file")
    try:
        shard = parse_shard(args.shard) if args.shard else shard_from_environment()
        run = FolderRun.plan(files, root, args.jsonl, shard)
    except ValueError as error:
        raise UserError(str(error)) from None
    if run.results is None:
        return run
    parts, added = run.merged
    if parts:
        print(f"{args.jsonl}: merged {parts} part files ({added} images)", file=sys.stderr)
    if run.cut:
        print(
            f"{run.results}: its last line was cut off (a run stopped while writing it); that image is redone",
            file=sys.stderr,
        )
    share = f" (shard {shard[0]} of {shard[1]})" if shard else ""
    print(f"{run.results}: {run.skipped} images already done, {len(run.files)} to do{share}", file=sys.stderr)
    return run


def align_outputs(folder, files, root, overwrite=False):
    """Per input, the pattern of its crops under ``folder``: its path relative to the
    input folder, without extension, plus ``_face<k>`` and its extension. Refused before
    anything is written when a crop could overwrite an input, or, without
    ``overwrite``, any file already there."""
    import re

    from ..images import display_path

    output_folder(folder, "--align")
    inputs = {os.path.realpath(f) for f in files}
    outputs, crop_patterns = {}, {}
    for path in files:
        stem, extension = os.path.splitext(os.path.relpath(path, root))
        prefix = os.path.join(folder, stem + "_face")
        outputs[path] = (prefix, extension)
        taken = re.compile(re.escape(os.path.realpath(prefix)) + r"\d+" + re.escape(extension) + "$")
        clash = next((other for other in inputs if taken.match(other)), None)
        if clash:
            raise UserError(
                f"--align {folder}: a crop of {display_path(path)} would overwrite the input "
                f"{display_path(clash)}; choose another folder"
            )
        crop_patterns[(os.path.realpath(prefix), extension)] = path
    if not overwrite and os.path.isdir(folder):
        crop = re.compile(r"(.*_face)\d+(\.[^./]*)?$")
        present = (os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)
        matched = (crop.match(os.path.realpath(p)) for p in present)
        refuse_existing([m[0] for m in matched if m and (m[1], m[2] or "") in crop_patterns], overwrite)
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
        help="detect faces in images, folders, videos or a camera",
        description="Detect faces and their 5 landmarks. With --out, each input's annotated copy keeps "
        "its path relative to IMAGE_OR_DIR and its file name (JSON: the file name plus .json); inputs are "
        "never overwritten. A folder run with --jsonl FILE appends one line per image as it goes; run it "
        "again to do only what is missing; --shard i/N (or torchrun's RANK and WORLD_SIZE) splits a folder "
        "between processes, each writing a part file that a run without shards merges. A video file, a "
        "camera index or a stream address gives an annotated video (--out) and one JSON line per frame.",
    )
    detect.add_argument(
        "input", metavar="INPUT", help="an image, a folder of images, a video, a camera index or a stream"
    )
    add_detector_options(detect)
    detect.add_argument("--threshold", type=fraction, default=0.6, help="score to draw and report a face (0.6)")
    detect.add_argument("--out", help="folder for annotated images or the video (and JSON with --json)")
    detect.add_argument(
        "--json", action="store_true", help="write <image>.json per image, or stream JSON lines to stdout without --out"
    )
    detect.add_argument("--no-draw", action="store_true", help="with --out: do not write annotated images or video")
    detect.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in --out or --align (without it, a run that would replace any is refused)",
    )
    detect.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    detect.add_argument(
        "--jsonl",
        metavar="FILE",
        help="folder runs: append one JSON line per image to FILE; images already in it are skipped",
    )
    detect.add_argument(
        "--shard",
        metavar="i/N",
        help="take the i-th of N shares of the images (0 <= i < N); default under torchrun: RANK/WORLD_SIZE",
    )
    detect.add_argument(
        "--workers", type=positive_int, default=None, help="threads decoding images ahead (CPUs, at most 4)"
    )
    detect.add_argument(
        "--align",
        metavar="DIR",
        default=None,
        help="write one aligned 112x112 crop per face (ArcFace template) into DIR",
    )
    add_size_options(detect, "cap the long side at this (alone: shrink only larger images)")
    add_ray_options(detect)
    detect.set_defaults(run=command_detect)
