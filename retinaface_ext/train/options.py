"""What a training run is asked to do: :class:`TrainConfig`, its command-line flags, and
the defaults, which depend on the data (the reference recipe for WIDER FACE, a ten-minute
CPU run for the built-in synthetic set)."""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from ..data.loader import default_workers
from ..models.config import config_for
from .window import LOG_EVERY

BACKBONES = ("mobilenet0.25", "resnet50")
#: The largest --image-size: a square crop of 64 megapixels, the Detector's limit too.
MAX_IMAGE_SIZE = 8192
#: Seeds are what torch.manual_seed takes: 64-bit unsigned.
MAX_SEED = 2**64 - 1
#: Flags a resumed run keeps from its checkpoint: they shape the weights, the data and the
#: random draws. Not given again, the run's values apply; given with another value, they
#: are refused (a run with another recipe starts from the checkpoint with --weights).
KEPT_ON_RESUME = (
    "backbone",
    "dcn",
    "data",
    "images",
    "batch_size",
    "image_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "schedule",
    "clip_grad",
    "amp",
    "seed",
    "sync_bn",
    "synthetic",
)
#: Flags that only start a run: the checkpoint holds the weights a resumed run continues.
STARTING_ONLY = ("weights", "pretrained_backbone")
SCHEDULES = ("step", "cosine")
AMP_MODES = ("fp16", "bf16")
#: The main job's data: drawn into this folder (under the user's cache) on first use.
SYNTHETIC = "synthetic"


@dataclass
class SyntheticDefaults:
    """The built-in set and a recipe that shows training work in about ten minutes on 2
    CPU cores (MobileNet-0.25 from scratch at 320 px)."""

    num_train: int = 800
    num_val: int = 100
    source_size: int = 480
    image_size: int = 320
    batch_size: int = 16
    epochs: int = 12
    lr: float = 0.01


def _flag(default, help: str, group: Optional[str] = None, kind: Optional[str] = None, choices=None):
    """A TrainConfig field and its ``retinaface train`` flag (made from it by
    :mod:`retinaface_ext.cli.train`): ``group`` of the help, ``kind`` of number the flag
    takes ("count": >= 1, "count0": >= 0, "positive": > 0, "number"; "switch": a
    --flag / --no-flag pair whose default None lets the run decide), ``choices``."""
    return field(default=default, metadata={"help": help, "group": group, "kind": kind, "choices": choices})


DATA, RECIPE, START, RUN = "data", "recipe", "start and resume", "run"


@dataclass
class TrainConfig:
    """What a training run is asked to do; each field is a flag of ``retinaface train``
    (``synthetic_dir`` and ``synthetic`` excepted: ``--synthetic-train`` and
    ``--synthetic-val`` set the latter's sizes)."""

    backbone: str = _flag("mobilenet0.25", "the backbone", choices=BACKBONES)
    dcn: bool = _flag(False, "deformable convolutions in the SSH context modules")
    data: str = _flag(
        SYNTHETIC,
        "'synthetic' (the built-in set, drawn on first use) or a RetinaFace label.txt / WIDER FACE bbx_gt file",
        DATA,
    )
    images: Optional[str] = _flag(None, "the images folder of --data (default: images/ beside it)", DATA)
    val_data: Optional[str] = _flag(None, "a label file to validate on (AP at IoU 0.5)", DATA)
    val_images: Optional[str] = _flag(None, "the images folder of --val-data", DATA)
    widerface_val: Optional[str] = _flag(None, "WIDER_val/images, for easy/medium/hard AP", DATA)
    widerface_gt: Optional[str] = _flag(None, "the folder of wider_face_val.mat and wider_*_val.mat", DATA)
    epochs: Optional[int] = _flag(None, "epochs to train", RECIPE, "count")
    batch_size: Optional[int] = _flag(None, "images per step, all processes together", RECIPE, "count")
    image_size: Optional[int] = _flag(None, "side of the square training crop", RECIPE, "count")
    lr: Optional[float] = _flag(None, "peak learning rate (1e-3; 0.01 for --data synthetic)", RECIPE, "positive")
    momentum: float = _flag(0.9, "SGD momentum", RECIPE, "number")
    weight_decay: float = _flag(5e-4, "SGD weight decay", RECIPE, "number")
    warmup_epochs: float = _flag(1.0, "linear warm-up, in epochs", RECIPE, "number")
    schedule: str = _flag(
        "step", "step: x0.1 at the preset's decay epochs, scaled to --epochs; or cosine", RECIPE, choices=SCHEDULES
    )
    clip_grad: Optional[float] = _flag(None, "clip the gradient norm to this", RECIPE, "positive")
    amp: Optional[str] = _flag(
        None, "mixed precision: fp16 (CUDA, with a gradient scaler) or bf16", RECIPE, choices=AMP_MODES
    )
    workers: Optional[int] = _flag(
        None,
        "data loading processes (default: the CPUs this process may use, shared per machine, at most 8)",
        RUN,
        "count0",
    )
    seed: int = _flag(0, "the random seed", RUN, "count0")
    device: Optional[str] = _flag(None, "cpu, cuda, cuda:1 (default: cuda if available)", RUN)
    out: str = _flag(os.path.join("runs", "train"), "run folder", RUN)
    exist_ok: bool = _flag(False, "write into an --out that holds an earlier run", RUN)
    weights: Optional[str] = _flag(None, "a Pytorch_Retinaface or retinaface_ext checkpoint to start from", START)
    pretrained_backbone: Optional[str] = _flag(
        None, "ImageNet weights: mobilenetV1X0.25_pretrain.tar, or torchvision's ResNet-50 state dict", START
    )
    resume: Optional[str] = _flag(None, "a last.pt to continue, or 'auto' (the --out run's last.pt)", START)
    val_every: int = _flag(1, "validate every N epochs and at the end", RUN, "count")
    sync_bn: bool = _flag(False, "SyncBatchNorm across GPUs under torchrun", RECIPE)
    channels_last: Optional[bool] = _flag(
        None,
        "train in channels-last memory format (default: on the CPU, where it is faster; off on CUDA)",
        RUN,
        "switch",
    )
    log_every: int = _flag(
        LOG_EVERY,
        "steps between reads of the losses (the loop's one host synchronisation: each step is still logged; a "
        "loss that is not finite stops the run there, saving the weights of the read before)",
        RUN,
        "count",
    )
    compile: bool = _flag(False, "torch.compile the model for training (the first steps compile it)", RUN)
    tensorboard: bool = _flag(
        False, "also write TensorBoard events into <out>/tensorboard (needs the tensorboard package)", RUN
    )
    synthetic_dir: Optional[str] = None
    synthetic: SyntheticDefaults = field(default_factory=SyntheticDefaults)

    def resolved(self) -> "TrainConfig":
        """A copy with every default filled in and every value checked (ValueError
        naming the flag)."""
        config = dataclasses.replace(self)
        if config.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {', '.join(BACKBONES)}, got {config.backbone!r}")
        preset = config_for(config.backbone)
        synthetic = config.data == SYNTHETIC
        defaults = config.synthetic
        if config.epochs is None:
            config.epochs = defaults.epochs if synthetic else preset.epochs
        if config.batch_size is None:
            config.batch_size = defaults.batch_size if synthetic else preset.batch_size
        if config.image_size is None:
            config.image_size = defaults.image_size if synthetic else preset.image_size
        if config.lr is None:
            config.lr = defaults.lr if synthetic else 1e-3
        for name in ("epochs", "batch_size", "image_size", "val_every"):
            if int(getattr(config, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
        if config.image_size % 32:
            raise ValueError(
                f"--image-size must be a multiple of 32 (the network's largest stride), got {config.image_size}"
            )
        if config.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"--image-size must be at most {MAX_IMAGE_SIZE} (a crop of 64 megapixels), got {config.image_size}"
            )
        if not 0 <= config.seed <= MAX_SEED:
            raise ValueError(f"--seed must be in [0, 2**64 - 1], got {config.seed}")
        if config.channels_last is None:  # measured faster on the CPU (our DCN reads channels-last); CUDA unmeasured
            config.channels_last = str(config.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith(
                "cpu"
            )
        if config.workers is None:
            processes = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's processes on this machine
            config.workers = default_workers(int(processes) if processes.isdigit() else 1)
        if config.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {config.workers}")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs"):
            value = getattr(config, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                bound = "> 0" if name == "lr" else ">= 0"
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")
        if config.clip_grad is not None and not config.clip_grad > 0:
            raise ValueError(f"--clip-grad must be > 0, got {config.clip_grad}")
        if config.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}")
        if config.amp is not None and config.amp not in AMP_MODES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {config.amp!r}")
        if config.amp == "fp16" and (not torch.cuda.is_available() or str(config.device or "cuda").startswith("cpu")):
            raise ValueError("--amp fp16 needs CUDA (its gradient scaler); on the CPU use --amp bf16")
        if (config.widerface_val is None) != (config.widerface_gt is None):
            raise ValueError("--widerface-val and --widerface-gt go together")
        if config.widerface_val is not None:
            if config.val_data is None and not (synthetic and config.synthetic.num_val > 0):
                raise ValueError(
                    "--widerface-val and --widerface-gt need validation data (--val-data, or the "
                    "synthetic set's validation images): the WIDER FACE APs are taken when it runs"
                )
            for flag, folder in (("--widerface-val", config.widerface_val), ("--widerface-gt", config.widerface_gt)):
                if not os.path.isdir(folder):
                    raise FileNotFoundError(f"{flag} {folder}: no such folder")
        if not synthetic and not os.path.isfile(config.data):
            raise FileNotFoundError(f"--data {config.data}: no such label file (or say --data synthetic)")
        if config.val_data is not None and not os.path.isfile(config.val_data):
            raise FileNotFoundError(f"--val-data {config.val_data}: no such label file")
        for name in ("weights", "pretrained_backbone"):
            path = getattr(config, name)
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"--{name.replace('_', '-')} {path}: no such file")
        return config

    def decay_epochs(self) -> Tuple[int, int]:
        """The preset's step-decay epochs (190 and 220 of 250), scaled to ``epochs``."""
        preset = config_for(self.backbone)
        return tuple(max(1, round(e * self.epochs / preset.epochs)) for e in preset.decay_epochs)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resumed(config: TrainConfig, recorded: dict, path: str) -> Tuple[TrainConfig, list]:
    """``config`` for continuing the run whose checkpoint (at ``path``) recorded the
    settings ``recorded``: each flag of KEPT_ON_RESUME not given takes the run's value,
    --epochs too (a longer run continues with the schedule of its new length). Returns
    the config and a note per value taken from the run; ValueError for a kept flag given
    with another value, or a starting-only flag given at all."""
    defaults, changes, notes = TrainConfig(), {}, []
    for name in STARTING_ONLY:
        if getattr(config, name) is not None:
            raise ValueError(
                f"--resume {path}: --{name.replace('_', '-')} starts a run; a resumed run continues "
                f"from the weights in its checkpoint"
            )
    for name in KEPT_ON_RESUME:
        given, default, was = getattr(config, name), getattr(defaults, name), recorded[name]
        if name == "synthetic":
            given, default = dataclasses.asdict(given), dataclasses.asdict(default)
        if given == was:
            continue
        flag = f"--{name.replace('_', '-')}"
        if given != default:
            raise ValueError(
                f"--resume {path}: the run used {flag} {was}, this one says {given}; a resumed run "
                f"keeps its recipe (to change it, start a new run with --weights {path})"
            )
        changes[name] = SyntheticDefaults(**was) if name == "synthetic" else was
        notes.append(f"{flag} {was}")
    if config.epochs is None:
        changes["epochs"] = recorded["epochs"]
    return dataclasses.replace(config, **changes), notes


def synthetic_cache_dir() -> str:
    """Where ``--data synthetic`` draws its set: ``$RETINAFACE_EXT_CACHE`` or
    ``~/.cache/retinaface_ext``, then ``synthetic-v<version>``."""
    from ..data.synthetic import VERSION
    from ..files import cache_root

    return os.path.join(cache_root(), f"synthetic-v{VERSION}")
