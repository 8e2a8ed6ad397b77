"""``retinaface detect SOURCE --ray [ADDRESS] --parquet OUT``: a folder (or any path Ray's
readers take) through the Ray Data stage, into Parquet part files; a rerun does only the
images OUT does not hold yet."""

import os
import sys

from .args import UserError, positive_int
from .shared import check_origin_size, detection_settings, weights_path

#: Options of a folder run that a Ray run does not take, with what to use instead.
NOT_WITH_RAY = {
    "out": "--out",
    "json": "--json",
    "jsonl": "--jsonl",
    "shard": "--shard",
    "align": "--align",
    "workers": "--workers",
}


def command_detect_ray(args) -> int:
    from ..models import weights as published
    from ..ray import ROWS_PER_PART, detect_to_parquet, done_paths, import_ray, start_local

    if args.ray is None:
        raise UserError("--parquet is written by a Ray run: add --ray (a local instance) or --ray ADDRESS")
    if not args.parquet:
        raise UserError("--ray writes its rows as Parquet: add --parquet OUT_DIR")
    for name, flag in NOT_WITH_RAY.items():
        if getattr(args, name):
            raise UserError(f"{flag} does not apply to a Ray run, which writes --parquet {args.parquet}")
    check_origin_size(args)
    if os.path.exists(args.parquet) and not os.path.isdir(args.parquet):
        raise UserError(f"--parquet {args.parquet}: is a file, not a folder")
    try:
        ray = import_ray()
        done_paths(args.parquet)  # a folder that is not ours is refused before Ray starts
    except ImportError as error:
        raise UserError(f"--ray: {error}") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    local = args.ray == "local"
    if local:  # fetched (or checked) once, here
        weights = os.path.abspath(weights_path(args))
    elif published.is_published_name(args.weights):  # each node fetches and checks it
        weights = args.weights
    else:  # a path the nodes must read too
        weights = os.path.abspath(args.weights)
    stage = dict(
        weights=weights,
        threshold=args.threshold,
        backbone=args.backbone,
        device=args.device,
        batch_size=args.batch_size,
        engine=args.engine,
        trust_package=args.trust_package,
        settings=detection_settings(args),
        target_size=args.target_size,
        max_size=args.max_size,
        scales=args.scales,
        flip=args.flip,
        merge=args.merge,
        threads=local_threads(args.actors) if local else None,
    )
    resources = {"num_gpus": 1} if args.device and args.device.startswith("cuda") else {}
    if local:
        resources.update(local_actor_resources(args.actors))
    started = not ray.is_initialized()
    if started:
        if local:
            start_local()
        else:
            ray.init(address=args.ray, configure_logging=False)
    try:
        written, skipped = detect_to_parquet(args.input, args.parquet, stage, args.recursive, args.actors, resources)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    finally:
        if started:
            ray.shutdown()
    print(
        f"{args.parquet}: {written} images written, {skipped} already there (part files of up to {ROWS_PER_PART} rows)",
        file=sys.stderr,
    )
    return 0


def local_threads(actors: int) -> int:
    """Torch threads of each actor on this machine: its cores shared out."""
    return max(1, (os.cpu_count() or 1) // actors)


def local_actor_resources(actors: int) -> dict:
    """What each actor asks of a local instance: the cores but one shared out (that one
    is left to Ray's reading tasks, which ask a whole CPU: actors holding every core would
    leave the reads waiting for ever), and ``OMP_NUM_THREADS`` set to its threads (Ray sets
    the CPUs asked, at least 1; see :class:`~retinaface_ext.ray.DetectFaces`'s ``threads``)."""
    cpus = os.cpu_count() or 1
    return {
        "num_cpus": max(cpus - 1, 0) / actors,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(local_threads(actors))}},
    }


def add_ray_options(parser) -> None:
    ray = parser.add_argument_group('Ray (pip install "retinaface_ext[ray]")')
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run as a Ray Data pipeline: on a local Ray instance, or on the cluster at ADDRESS "
        "(ray://host:10001, or 'auto'); INPUT may be a folder or a URI Ray reads (s3://, gs://)",
    )
    ray.add_argument(
        "--parquet",
        metavar="OUT_DIR",
        help="with --ray: write one row per image into Parquet part files in OUT_DIR; images already there are skipped",
    )
    ray.add_argument(
        "--actors", type=positive_int, default=1, help="with --ray: detector actors (one per GPU on a cluster; 1)"
    )
