"""``retinaface synthetic`` and ``retinaface check-data``: the training data commands."""

import os

from ..targets import LABEL
from .args import non_negative_int, positive_int


def command_synthetic(args) -> int:
    from ..data.synthetic import make_synthetic_faces

    made = make_synthetic_faces(
        args.out,
        num_train=args.train,
        num_val=args.val,
        seed=args.seed,
        image_size=args.image_size,
        workers=args.workers,
    )
    print(f"train: {made.train_labels}")
    if made.val_labels:
        print(f"val:   {made.val_labels}")
    return 0


def command_check_data(args) -> int:
    from ..data import WiderFaceDataset

    dataset = WiderFaceDataset(args.label_file, images_dir=args.images)
    annotations = dataset.annotations
    labelled = int((annotations.targets[:, LABEL] > 0).sum())
    empty = int((annotations.offsets[1:] == annotations.offsets[:-1]).sum())
    print(
        f"{args.label_file}: {annotations.format} format, {len(dataset)} images ({empty} without faces), "
        f"{dataset.num_faces} faces ({labelled} with landmarks), {annotations.dropped} dropped"
    )
    missing = dataset.missing_images()
    for path in missing:
        print(f"missing: {path}")
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(dataset)} images are missing from {dataset.images_dir}")
    print(f"every image is in {dataset.images_dir}")
    return 0


def add_data_commands(commands) -> None:
    synthetic = commands.add_parser(
        "synthetic",
        help="write the built-in synthetic face set (label.txt + images/)",
        description="Draw the synthetic face set (a stand-in for WIDER FACE, not a substitute) into OUT/train "
        "and OUT/val in the RetinaFace label.txt layout. The same seed gives the same bytes; a "
        "folder holding the same set is reused, anything else in OUT is never overwritten.",
    )
    synthetic.add_argument("out", metavar="OUT")
    synthetic.add_argument("--train", type=positive_int, default=2000, help="training images (2000)")
    synthetic.add_argument("--val", type=non_negative_int, default=200, help="validation images (200)")
    synthetic.add_argument("--seed", type=non_negative_int, default=0, help="random seed (0)")
    synthetic.add_argument("--image-size", type=positive_int, default=640, help="the images' long side (640)")
    synthetic.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help=f"processes drawing images (default: one per CPU, at most 8; here {os.cpu_count()})",
    )
    synthetic.set_defaults(run=command_synthetic)

    check = commands.add_parser(
        "check-data",
        help="read a label file and look for every image it names",
        description="Parse a RetinaFace label.txt or a WIDER FACE bbx_gt file, report its images and faces, "
        "and list every missing image on stdout (exit status 2 if any).",
    )
    check.add_argument("label_file", metavar="LABEL_FILE")
    check.add_argument("--images", default=None, help="the images folder (default: images/ beside LABEL_FILE)")
    check.set_defaults(run=command_check_data)
