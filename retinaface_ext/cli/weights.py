"""``retinaface weights``: the published weights by name, what is in the weights folder,
and fetching or checking one (:mod:`retinaface_ext.models.weights`)."""

import os

from .args import UserError


def command_weights(args) -> int:
    from ..models import weights

    if args.action == "list":
        if args.name:
            raise UserError("weights list takes no name")
        print(f"weights folder: {weights.weights_folder()}")
        for entry in weights.PUBLISHED.values():
            path = weights.cached_path(entry.name)
            state = f"cached: {path}" if os.path.isfile(path) else "not cached"
            pinned = "digest pinned" if entry.digest else "digest not pinned"
            print(f"{entry.name:14} {entry.backbone:14} {pinned:18} {state}")
            for url in weights.addresses(entry.name):
                print(f"{'':14} {url}")
        return 0
    if not args.name:
        raise UserError(f"weights {args.action} needs a name ({', '.join(weights.PUBLISHED)}) or, to verify, a file")
    if args.action == "fetch":
        print(weights.fetch(weights.published(args.name).name, progress=not args.quiet))
        return 0
    return verify(args.name)


def verify(name_or_path: str) -> int:
    """Check the cached weights of a name, or say which published weights a file holds."""
    from ..models import read_state_dict, weights

    if weights.is_published_name(name_or_path):
        path = weights.cached_path(name_or_path)
        if not os.path.isfile(path):
            raise UserError(f"{name_or_path} is not in the weights folder ({path}); 'fetch' downloads it")
        weights.load_published(name_or_path)
        print(f"{path}: the published {name_or_path} weights")
        return 0
    if not os.path.isfile(name_or_path):
        raise UserError(f"{name_or_path}: neither a file nor a published name ({', '.join(weights.PUBLISHED)})")
    digest = weights.tensors_digest(read_state_dict(name_or_path))
    matches = [entry.name for entry in weights.PUBLISHED.values() if entry.digest == digest]
    if not matches:
        print(f"{name_or_path}: tensor digest {digest}, not one of the pinned published weights")
        return 1
    print(f"{name_or_path}: the published {matches[0]} weights")
    return 0


def add_weights_command(commands) -> None:
    parser = commands.add_parser(
        "weights",
        help="list, fetch or verify published weights",
        description="Published RetinaFace weights by name (--weights NAME in the other commands). "
        "'list' shows the names, their addresses and what is in the weights folder "
        "($RETINAFACE_EXT_HOME/weights, else the cache folder); 'fetch NAME' downloads and checks "
        "one (offline, save the file by hand at the path the error names); 'verify NAME_OR_FILE' "
        "checks the cached file of a name, or says which published weights a file holds.",
    )
    parser.add_argument("action", nargs="?", default="list", choices=["list", "fetch", "verify"])
    parser.add_argument("name", nargs="?", metavar="NAME_OR_FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=command_weights)
