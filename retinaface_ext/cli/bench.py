"""``retinaface bench``: the whole detect call, the forward pass and the post-processing
timed on one image, and with --batch-size N a call on N copies of it; images per second
from the medians."""

import time

from .args import UserError, positive_int, positive_number
from .shared import add_detector_options, add_level_options, make_detector


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

    detector = make_detector(args, target_size=args.target_size, max_size=args.max_size)
    image = detector.read_image(args.image)
    pixels = detector.pass_pixels(*image.shape[:2])
    if args.batch_size * pixels > detector.max_pass_pixels:  # one pass is asked for: say so rather than split it
        raise UserError(
            f"--batch-size {args.batch_size}: {args.batch_size} images of {pixels / 1e6:.2f}M pixels are "
            f"{args.batch_size * pixels / 1e6:.0f}M pixels in one forward pass, more than the "
            f"{detector.max_pass_pixels / 1e6:.0f}M pixels a pass may take (Detector's max_pass_pixels); "
            f"at most {max(1, detector.max_pass_pixels // pixels)} of this image"
        )
    prepared = detector.network_input(image)
    with torch.inference_mode():
        outputs = detector.model(prepared)
        size = tuple(prepared.shape[-2:])
        stages = {
            "detect (all)": lambda: detector.detect(image),
            "forward": lambda: detector.model(prepared),
            "postprocess": lambda: detector.postprocess(*outputs, size),
        }
        images = {"detect (all)": 1}
        if args.batch_size > 1:  # throughput: one call on a batch of copies of the image
            batch = [image] * args.batch_size
            stages[f"detect x{args.batch_size}"] = lambda: detector.detect(batch)
            images[f"detect x{args.batch_size}"] = args.batch_size
        for fn in stages.values():
            for _ in range(3):
                fn()
        print(
            f"{args.image}: {image.shape[1]}x{image.shape[0]}, network input {size[1]}x{size[0]}, "
            f"{detector.config.backbone} with {detector.engine.name} on {detector.device} ({torch.get_num_threads()} "
            f"threads), {args.runs} runs"
        )
        for name, fn in stages.items():
            median, best = _timed(fn, args.runs, detector.device)
            rate = f"   {images[name] * 1000 / median:8.1f} images/s" if name in images else ""
            print(f"  {name:13s} median {median:8.2f} ms   min {best:8.2f} ms{rate}")
    return 0


def add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="time detection on one image",
        description="Time the whole detect call, the forward pass and the "
        "post-processing (decode, filter, NMS) on one image, and with --batch-size N one call on "
        "N copies of it; detect rows say images per second (from the median).",
    )
    bench.add_argument("image")
    add_detector_options(bench)
    bench.add_argument("--runs", type=positive_int, default=20, help="timed runs after 3 warm-up runs (20)")
    bench.add_argument("--target-size", type=positive_number, default=None, help="resize the short side to this")
    bench.add_argument("--max-size", type=positive_number, default=None, help="cap the long side at this")
    add_level_options(bench)
    bench.set_defaults(run=command_bench)
