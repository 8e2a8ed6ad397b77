"""``retinaface export``: a checkpoint to ONNX (:func:`retinaface_ext.export.to_onnx`)."""

import os

from .args import UserError, checkpoint_path, positive_int
from .shared import add_detection_settings, detection_settings


def command_export(args) -> int:
    if (args.onnx is None) == (args.pt2 is None):
        raise UserError("give one of --onnx OUT and --pt2 OUT")
    out, option = (args.onnx, "--onnx") if args.onnx else (args.pt2, "--pt2")
    weights = checkpoint_path(args.weights)
    if os.path.isdir(out):
        raise UserError(f"{option} {out}: is a folder, not a file")
    if os.path.exists(out) and not args.overwrite:
        raise UserError(f"{option} {out}: the file exists (add --overwrite to replace it)")
    if os.path.realpath(out) == os.path.realpath(weights):
        raise UserError(f"{option} {out}: that is the checkpoint itself")
    dynamic = args.dynamic or args.size is None
    size = tuple(args.size) if args.size else (640, 640)
    if args.pt2:
        return export_pt2(args, weights, dynamic, size)
    if args.device != "cpu":
        raise UserError("--device applies to --pt2 (ONNX files run where onnxruntime runs them)")
    from ..export import to_onnx

    try:
        report = to_onnx(
            weights,
            args.onnx,
            dynamic=dynamic,
            opset=args.opset,
            postprocess=args.postprocess,
            size=size,
            batch=args.batch,
            exporter=args.exporter,
            check=not args.no_check,
            settings=detection_settings(args),
        )
    except RuntimeError as error:  # the check with onnxruntime failed; nothing was written
        raise UserError(f"{error} (nothing written; --no-check writes it anyway)") from None
    print(report)
    print(f"input: {', '.join(report.inputs)}; outputs: {', '.join(report.outputs)}")
    return 0


def export_pt2(args, weights, dynamic, size) -> int:
    from ..export import to_pt2

    if args.opset is not None or args.exporter != "dynamo":
        raise UserError("--opset and --exporter apply to --onnx")
    try:
        report = to_pt2(
            weights,
            args.pt2,
            device=args.device,
            postprocess=args.postprocess,
            dynamic=dynamic,
            size=size,
            batch=args.batch,
            settings=detection_settings(args),
            check=not args.no_check,
        )
    except RuntimeError as error:  # export, compilation or the check failed; nothing was written
        raise UserError(str(error)) from None
    print(report)
    print(f"input: images; outputs: {', '.join(report.outputs)}")
    return 0


def add_export_command(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or to an AOTInductor package (.pt2)",
        description="Export the network (BatchNorm folded, heads merged) to ONNX; with --postprocess, the "
        "whole detector (priors, decoding, NonMaxSuppression) so that a deployment needs no Python. "
        "Batch, height and width are dynamic unless --size is given alone. Deformable "
        "convolutions become ONNX DeformConv (opset 19+). The file is checked with onnxruntime "
        "when it is installed. --pt2 writes an AOTInductor package instead (torch.export, compiled ahead "
        "of time for --device; with --postprocess it returns boxes, scores, landmarks and counts through "
        "our detect_faces op). See the README for the graphs' inputs and outputs.",
    )
    parser.add_argument(
        "--weights",
        default="mobilenet0.25",
        help="checkpoint (Pytorch_Retinaface's or ours), or published weights by name: mobilenet0.25 "
        "(the default), resnet50 (downloaded once, see 'retinaface weights')",
    )
    parser.add_argument("--onnx", metavar="OUT", help="the .onnx file to write")
    parser.add_argument("--pt2", metavar="OUT", help="the AOTInductor package (.pt2) to write instead")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="with --pt2: what the package runs on (cpu)"
    )
    parser.add_argument(
        "--dynamic", action="store_true", help="dynamic batch, height and width (the default without --size)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="the example input's height and width; alone: the graph's fixed size",
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="the example (or fixed) batch (1)")
    parser.add_argument("--postprocess", action="store_true", help="include decoding and NMS in the graph")
    parser.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default 19)")
    parser.add_argument(
        "--exporter",
        choices=["dynamo", "torchscript"],
        default="dynamo",
        help="torch's exporter: torch.export-based (default) or TorchScript (network only)",
    )
    add_detection_settings(parser, "with --postprocess: ")
    parser.add_argument(
        "--no-check", action="store_true", help="do not run the file (onnxruntime, or the .pt2) against PyTorch"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=command_export)
