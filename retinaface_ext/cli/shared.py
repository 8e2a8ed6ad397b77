"""Steps several commands share: finding image files, output folders, the detector and its
options, progress bars."""

import os
import sys
from typing import List, Tuple

from ..models.config import DetectionSettings
from .args import UserError, checkpoint_path, fraction, positive_int, positive_number, scales

#: The long side of the WIDER FACE multi-scale protocol, used with --target-size.
PROTOCOL_MAX_SIZE = 2150


def image_files(path: str, recursive: bool = False) -> Tuple[List[str], str]:
    """The library's :func:`~retinaface_ext.images.list_images`, its refusals as UserError."""
    from ..images import list_images

    try:
        return list_images(path, recursive)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from None


def output_folder(path: str, option: str = "--out") -> str:
    """``path`` as a folder to write into: refused when it, or a folder above it, is a file."""
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        where = "is" if probe == os.path.abspath(path) else f"lies under {probe}, which is"
        raise UserError(f"{option} {path}: {where} a file, not a folder")
    return path


def refuse_existing(paths, overwrite: bool) -> None:
    """Nothing is written over a file this run did not make: the existing files among
    ``paths`` (None entries skipped) are refused in one line, before any work, unless
    ``overwrite`` (``--overwrite``); a folder in the way is refused either way."""
    from ..images import display_path

    taken = [p for p in paths if p and os.path.lexists(p)]
    for path in taken:
        if os.path.isdir(path):
            raise UserError(f"{display_path(path)}: is a folder, where an output file would go")
    if taken and not overwrite:
        if len(taken) == 1:
            raise UserError(f"{display_path(taken[0])} already exists; add --overwrite to replace it")
        more = f"{len(taken) - 1} more output file{'s' if len(taken) > 2 else ''}"
        raise UserError(f"{display_path(taken[0])} and {more} already exist; add --overwrite to replace them")


def weights_path(args) -> str:
    """--weights as a file: a checkpoint (published names fetched and checked) or an
    exported network (.onnx, .pt2)."""
    if not args.weights.lower().endswith((".onnx", ".pt2")):
        return checkpoint_path(args.weights)
    if not os.path.isfile(args.weights):
        raise UserError(f"--weights {args.weights}: no such file")
    return args.weights


def make_detector(args, weights=None, **overrides):
    """The Detector of the command's options (``weights``: :func:`weights_path`'s, when
    the caller has it already)."""
    from ..inference import Detector

    device = args.device
    if device is None and "LOCAL_RANK" in os.environ:  # one GPU per process under torchrun
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    options = dict(
        backbone=args.backbone,
        device=device,
        batch_size=args.batch_size,
        engine=args.engine,
        trust_package=args.trust_package,
        settings=detection_settings(args),
    )
    if hasattr(args, "scales"):
        options.update(scales=args.scales, flip=args.flip, merge=args.merge)
    options.update(overrides)
    return Detector(weights or weights_path(args), **options)


def progress_bar(total, description, enabled=True, unit="image"):
    """A progress bar on stderr that clears itself when it ends (so an error after it is
    still one line); the commands print their own summaries."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=description, unit=unit, disable=not enabled or total < 2, file=sys.stderr, leave=False
    )


# ---------------------------------------------------------------- commands


def check_origin_size(args):
    for option, value in (("--target-size", args.target_size), ("--max-size", args.max_size)):
        if args.origin_size and value is not None:
            raise UserError(f"--origin-size and {option} contradict each other")


def prediction_sizes(args):
    check_origin_size(args)
    if args.target_size is not None:
        return args.target_size, args.max_size if args.max_size is not None else PROTOCOL_MAX_SIZE
    return None, args.max_size  # original size, capped only when --max-size is given


def add_detector_options(parser, batch_size=1):
    parser.add_argument(
        "--weights",
        default="mobilenet0.25",
        help="Pytorch_Retinaface checkpoint (.pth), a network exported by 'retinaface export', or "
        "published weights by name: mobilenet0.25 (the default), resnet50 (downloaded once and "
        "checked, see 'retinaface weights')",
    )
    parser.add_argument(
        "--backbone",
        choices=["mobilenet0.25", "resnet50"],
        default=None,
        help="insist on a backbone (default: read from the checkpoint)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    add_detection_settings(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"images per forward pass; similar sizes share one ({batch_size})",
    )
    parser.add_argument(
        "--trust-package",
        action="store_true",
        help="run a .pt2 --weights package that this installation did not build (a package is native "
        "code that runs as it loads: only from a source you trust)",
    )
    parser.add_argument(
        "--engine",
        choices=["torch", "onnxruntime", "aoti"],
        default=None,
        help="run the network with PyTorch, onnxruntime (CPU) or an AOTInductor package (exported "
        "and compiled once, cached); default: torch, onnxruntime for an .onnx file, aoti for a .pt2",
    )


def add_detection_settings(parser, note: str = "") -> None:
    """The flags of :class:`~retinaface_ext.models.DetectionSettings`, with its defaults
    (``--confidence`` and ``--nms``, the older names, still work)."""
    defaults = DetectionSettings()
    parser.add_argument(
        "--score-threshold",
        "--confidence",
        dest="score_threshold",
        type=fraction,
        default=defaults.score_threshold,
        help=f"{note}the face score a candidate needs ({defaults.score_threshold})",
    )
    parser.add_argument(
        "--nms-threshold",
        "--nms",
        dest="nms_threshold",
        type=fraction,
        default=defaults.nms_threshold,
        help=f"{note}NMS IoU threshold ({defaults.nms_threshold})",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=defaults.top_k,
        help=f"{note}candidates per image that go through NMS ({defaults.top_k})",
    )
    parser.add_argument(
        "--keep-top-k",
        type=positive_int,
        default=defaults.keep_top_k,
        help=f"{note}detections kept per image ({defaults.keep_top_k})",
    )


def detection_settings(args) -> DetectionSettings:
    return DetectionSettings(args.score_threshold, args.nms_threshold, args.top_k, args.keep_top_k)


def add_size_options(parser, max_size_help):
    sizes = parser.add_argument_group("image size (default: the original size)")
    sizes.add_argument("--origin-size", action="store_true", help="test at the original size (the default)")
    sizes.add_argument("--target-size", type=positive_number, default=None, help="resize the short side to this")
    sizes.add_argument("--max-size", type=positive_number, default=None, help=max_size_help)
    add_level_options(parser)


def add_level_options(parser):
    levels = parser.add_argument_group("levels (default: one pass at one scale)")
    levels.add_argument(
        "--scales",
        type=scales,
        default=(1.0,),
        help="look at each image at these scales, after the resize (1,2.5: the accurate setting), or "
        "'auto': a second, enlarged look where the first found small faces",
    )
    levels.add_argument("--flip", action="store_true", help="look at each level mirrored too")
    levels.add_argument(
        "--merge",
        choices=["nms", "vote"],
        default="nms",
        help="how the faces of the levels become one set: NMS, or box voting (nms)",
    )
