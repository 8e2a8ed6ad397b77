"""The training loop: data, model, the reference recipe, checkpoints, validation,
interrupts. One process, or many under ``torchrun`` with DistributedDataParallel.

(Over 450 lines on purpose: the loop, its checkpoints, resuming and stopping read and
write one state, the epoch, step, random draws and best AP, and stay one class so that
the order in which they do it can be read in one place. What it measures when it
validates is validation.py's; the losses' reads and the last checked state, window.py's.)"""

import itertools
import logging
import math
import os
import shutil
import signal
import time
from typing import Dict, Optional

import numpy as np
import torch

from ..data import TrainTransform, WiderFaceDataset, make_loader
from ..data.loader import usable_workers
from ..data.synthetic import make_synthetic_faces
from ..devices import resolve_device
from ..inference import Detector
from ..loss import MultiBoxLoss
from ..models import RetinaFace
from ..models.config import config_for
from ..priors import prior_boxes
from .curves import TensorBoard, draw_results
from .distributed import Distributed
from .options import KEPT_ON_RESUME, SYNTHETIC, TrainConfig, resumed, synthetic_cache_dir
from .pretrained import load_pretrained_backbone
from .schedule import make_scheduler
from .state import (
    BEST,
    LAST,
    LOSS_PARTS,
    JsonLog,
    fit_optimizer_to_run,
    load_training_checkpoint,
    prepare_run_folder,
    random_states,
    restore_random_states,
    save_checkpoint,
    write_args,
)
from .validation import fixed_algorithms, read_widerface_ground_truth, validation_metrics
from .window import StepWindow

log = logging.getLogger("retinaface_ext.train")


class TrainingStopped(RuntimeError):
    """An interrupt or a non-finite loss ended the run; a checkpoint was saved first.
    ``exit_status``: 130 for an interrupt, 1 for a non-finite loss."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


class Trainer:
    """Trains a RetinaFace as :class:`~retinaface_ext.train.options.TrainConfig` says;
    :meth:`fit` runs it and returns the last validation metrics.

    ``freeze_batchnorm`` keeps BatchNorm on its running statistics (for comparing a
    run split over processes with a one-process run; not for real training).
    """

    def __init__(self, config: TrainConfig, freeze_batchnorm: bool = False, show_progress: bool = True):
        self.out = os.path.abspath(config.out)
        checkpoint, self.resume_path, notes = None, None, []
        if config.resume is not None:  # the run's recipe first: everything below depends on it
            self.resume_path = os.path.join(self.out, LAST) if config.resume == "auto" else config.resume
            checkpoint = load_training_checkpoint(self.resume_path, required_args=KEPT_ON_RESUME + ("epochs",))
            config, notes = resumed(config, checkpoint["args"], self.resume_path)
        self.config = config = config.resolved()
        self.dist = Distributed.from_environment(config.device)
        self.device = self._device()
        self.is_main, self.show_progress = self.dist.is_main, show_progress
        self._check_batch()
        continuing = checkpoint is not None and os.path.realpath(
            os.path.dirname(os.path.abspath(self.resume_path))
        ) == os.path.realpath(self.out)
        if self.is_main:
            prepare_run_folder(self.out, config.exist_ok, continuing)
            for note in notes:
                log.info("resuming with the run's %s", note)
        self.dist.barrier()
        self.preset = config_for(config.backbone)
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model = self._model().to(self.device)
        self.fused_sgd = self.device.type == "cuda"
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            fused=self.fused_sgd,  # one kernel for all parameters
        )
        if checkpoint is not None:  # a checkpoint that does not fit fails before the data are read
            self._restore(checkpoint, "model", "optimizer", "rng")
        self.train_set, self.val_set = self._datasets()
        self.ground_truth = read_widerface_ground_truth(config.widerface_gt if self.is_main else None)
        self.freeze_batchnorm = freeze_batchnorm
        self.net = self.model
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.compile:
            self.net = torch.compile(self.net)
        self.criterion = MultiBoxLoss(loc_weight=self.preset.loc_weight, variances=self.preset.variances)
        self.priors = prior_boxes(
            (config.image_size, config.image_size), self.preset.min_sizes, self.preset.steps, device=self.device
        )
        per_process = config.batch_size // self.dist.world_size
        workers = usable_workers(config.workers, len(self.train_set) // max(1, per_process * self.dist.world_size))
        if workers < config.workers and self.is_main:
            log.warning(
                "--workers %d lowered to %d: no more can work at once here (the CPUs this process may use, "
                "the batches of an epoch)",
                config.workers,
                workers,
            )
        self.loader = make_loader(
            self.train_set,
            per_process,
            shuffle=True,
            num_workers=workers,
            seed=config.seed,
            distributed=self.dist.enabled,
            drop_last=True,
        )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images make no batch of {config.batch_size}")
        self.scheduler = make_scheduler(
            self.optimizer,
            self.steps_per_epoch,
            config.epochs,
            config.warmup_epochs,
            config.schedule,
            config.decay_epochs(),
        )
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.epoch = self.step = self.step_in_epoch = 0
        self.best_ap, self.metrics, self._validation_due = -math.inf, {}, False
        if checkpoint is not None:
            self._resume(checkpoint)
        self.log = JsonLog(os.path.join(self.out, "log.jsonl") if self.is_main else None)
        self.board = TensorBoard(os.path.join(self.out, "tensorboard")) if config.tensorboard and self.is_main else None
        self._plot_note_shown = False
        if self.is_main:
            write_args(self.out, config.as_dict())
        self._stop_requested: Optional[str] = None

    # ------------------------------------------------------------------ set-up

    def _check_batch(self) -> None:
        config, processes = self.config, self.dist.world_size
        if config.batch_size % processes:
            raise ValueError(f"--batch-size {config.batch_size} must be a multiple of the {processes} processes")
        # BatchNorm needs two values per channel; the smallest feature map is 1/32 of the crop.
        per_process, cells = config.batch_size // processes, (config.image_size // 32) ** 2
        if per_process * cells < 2:
            raise ValueError(
                f"--batch-size {config.batch_size} at --image-size {config.image_size} leaves "
                f"BatchNorm one value per channel at the network's coarsest level (1/32 of the crop, "
                f"per process); raise either"
            )

    def _device(self) -> torch.device:
        if self.dist.enabled and torch.cuda.is_available() and (self.config.device in (None, "cuda")):
            return torch.device("cuda", self.dist.local_rank)
        return resolve_device(self.config.device)

    def _autocast_dtype(self) -> Optional[torch.dtype]:
        if self.config.amp is None:
            return None
        if self.config.amp == "fp16":
            return torch.float16
        return torch.bfloat16

    def _datasets(self):
        config = self.config
        transform = TrainTransform(
            config.image_size, mean=self.preset.mean_bgr, subtract_mean=self.device.type != "cuda"
        )
        if config.data == SYNTHETIC:
            made = self._synthetic()
            train_labels, images, val_labels, val_images = made.train_labels, None, made.val_labels, None
        else:
            train_labels, images = config.data, config.images
            val_labels, val_images = config.val_data, config.val_images
        train = WiderFaceDataset(train_labels, images, transform=transform)
        val = WiderFaceDataset(val_labels, val_images) if val_labels else None
        for flag, dataset in (("--data", train), ("--val-data", val)):
            missing = dataset.missing_images() if dataset is not None else []
            if missing:
                raise FileNotFoundError(
                    f"{flag} {dataset.label_file}: {len(missing)} of its {len(dataset)} images "
                    f"are missing, such as {missing[0]} (retinaface check-data lists them)"
                )
        if self.is_main:
            log.info("training on %s", train)
            if val is not None:
                log.info("validating on %s", val)
        return train, val

    def _synthetic(self):
        settings = self.config.synthetic
        folder = os.path.join(
            self.config.synthetic_dir or synthetic_cache_dir(),
            f"{settings.num_train}-{settings.num_val}-{settings.source_size}px",
        )
        arguments = dict(
            num_train=settings.num_train, num_val=settings.num_val, seed=0, image_size=settings.source_size
        )
        if self.is_main:
            make_synthetic_faces(folder, progress=self.show_progress, **arguments)
        self.dist.barrier()
        return make_synthetic_faces(folder, **arguments)

    def _model(self) -> RetinaFace:
        config = self.config
        if config.weights:
            model = RetinaFace.from_checkpoint(config.weights, backbone=config.backbone, dcn=config.dcn)
        else:
            model = RetinaFace(config.backbone, dcn=config.dcn)
        if config.pretrained_backbone:
            load_pretrained_backbone(model, config.pretrained_backbone)
        if config.sync_bn and self.dist.enabled and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    # ------------------------------------------------------------------ the loop

    def fit(self) -> Dict[str, float]:
        handlers = self._catch_signals()
        try:
            if self._validation_due:  # the run stopped while validating its last epoch
                self._validate_epoch()
            while self.epoch < self.config.epochs:
                self._train_epoch()
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                last = self.epoch == self.config.epochs
                if self.val_set is not None and (last or self.epoch % self.config.val_every == 0):
                    self._save(LAST, validation_due=True)  # the epoch is kept whatever the validation does
                    self._validate_epoch()
                else:
                    self._save_epoch(None)
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
            self.loader.close()
            self.log.close()
            if self.board is not None:
                self.board.close()
            self.draw_curves()
        if self.is_main and self.val_set is not None:
            self.draw_val_image(os.path.join(self.out, "val_detections.jpg"))
        return self.metrics

    def _train_epoch(self) -> None:
        from tqdm import tqdm

        self.loader.set_epoch(self.epoch)
        self.net.train()
        if self.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        bar = self.bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            unit="batch",
            leave=False,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not (self.is_main and self.show_progress),
        )
        skip, started, images = self.step_in_epoch, time.perf_counter(), 0
        self.totals, self.window = np.zeros(3), StepWindow(self.config.log_every)
        self.window.remember(self)
        # Time spent waiting for the loader, apart from the steps: a data-bound run shows
        # itself as a large share of waiting (more --workers, or a faster disk, would help).
        waited = 0.0
        batches = iter(self.loader)
        with bar:
            for index in itertools.count():
                asked = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                if index < skip:
                    continue  # a resumed epoch: the same batches, in the same order, as before the stop
                waited += time.perf_counter() - asked
                self._stop_if_requested(collective=self.window.due())
                losses = self._train_step(batch)
                self.step, self.step_in_epoch = self.step + 1, self.step_in_epoch + 1
                images += len(batch.images) * self.dist.world_size
                elapsed = time.perf_counter() - started
                lr = self.optimizer.param_groups[0]["lr"]
                self.window.add(self.step, losses, lr=lr, images_per_s=images / elapsed, data_wait=waited / elapsed)
                bar.update()
                if self.window.due():
                    self._check()
            self._check()
        done = max(self.step_in_epoch - skip, 1)
        if self.is_main:
            elapsed = time.perf_counter() - started
            log.info(
                "epoch %d/%d: loss_l %.4f, loss_c %.4f, loss_landm %.4f, %.1f images/s, %.0f%% of the time waiting "
                "for data",
                self.epoch + 1,
                self.config.epochs,
                *(self.totals / done),
                images / elapsed,
                100 * waited / elapsed,
            )

    def _check(self) -> None:
        """Reads the window's losses back (the loop's one synchronisation), logs its steps,
        stops at a loss that is not finite, and remembers the state as the last good one."""
        last = None
        for pending, values in self.window.read_back():
            if not np.isfinite(values).all():
                self._stop_on_non_finite(pending.step, values)
            self.totals += values
            last = dict(zip(LOSS_PARTS, values.tolist()), **pending.logged)
            self.log.write(event="step", epoch=self.epoch + 1, step=pending.step, **last)
            if self.board is not None:
                self.board.scalars("train", last, pending.step)
        if last is not None:  # the bar shows the last step read
            self.bar.set_postfix(
                loc=f"{last[LOSS_PARTS[0]]:.3f}",
                cls=f"{last[LOSS_PARTS[1]]:.3f}",
                landm=f"{last[LOSS_PARTS[2]]:.3f}",
                lr=f"{last['lr']:.2e}",
                img_s=f"{last['images_per_s']:.1f}",
                data=f"{last['data_wait']:.0%}",
            )
        self.window.remember(self)

    def _train_step(self, batch) -> torch.Tensor:
        """One step; returns its three losses, still on the device (see :meth:`_check`)."""
        layout = torch.channels_last if self.config.channels_last else torch.contiguous_format
        batch = batch.to(self.device, non_blocking=True).normalized(self.preset.mean_bgr, layout)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            predictions = self.net(batch.images)
        sum_l, sum_c, sum_landm, positives, with_landmarks = self.criterion.sums(predictions, self.priors, batch)
        # Divisors over the whole global batch; DDP averages the gradients of the processes.
        positives = self.dist.sum(positives).clamp(min=1).float() / self.dist.world_size
        with_landmarks = self.dist.sum(with_landmarks).clamp(min=1).float() / self.dist.world_size
        losses = torch.stack([sum_l / positives, sum_c / positives, sum_landm / with_landmarks])
        total = self.criterion.total(tuple(losses))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses.detach()

    # ------------------------------------------------------------------ validation

    def detector(self) -> Detector:
        return Detector(self.model, device=self.device)

    def validate(self) -> Dict[str, float]:
        """AP at IoU 0.5 over every face of the validation set (and WIDER FACE's easy,
        medium, hard APs when asked); rank 0 computes, the others wait."""
        metrics: Dict[str, float] = {}
        if self.is_main:
            with fixed_algorithms():
                metrics = self._validate()
        self.dist.barrier()
        return metrics

    def _validate(self) -> Dict[str, float]:
        metrics = validation_metrics(self.detector(), self.val_set, self.config.widerface_val, self.ground_truth)
        self.log.write(event="validation", epoch=self.epoch, step=self.step, **metrics)
        if self.board is not None:
            self.board.scalars("val", metrics, self.epoch)
        log.info(
            "epoch %d: validation AP@0.5 %.4f%s",
            self.epoch,
            metrics["ap50"],
            "".join(f", {k} {v:.4f}" for k, v in metrics.items() if k in ("easy", "medium", "hard")),
        )
        return metrics

    def draw_val_image(self, path: str, index: int = 0, threshold: float = 0.5) -> None:
        from ..draw import draw_detections
        from ..files import write_image

        image, _ = self.val_set[index]
        write_image(path, draw_detections(image, self.detector().detect(image), threshold=threshold))

    # ------------------------------------------------------------------ checkpoints

    def _save(self, name: str, **extra) -> None:
        if not self.is_main:
            return
        save_checkpoint(
            os.path.join(self.out, name),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            step=self.step,
            step_in_epoch=self.step_in_epoch,
            best_ap=self.best_ap,
            metrics=dict(self.metrics),
            rng=random_states(),
            args=self.config.as_dict(),
            backbone=self.config.backbone,
            dcn=self.config.dcn,
            **extra,
        )

    def _validate_epoch(self) -> None:
        self.metrics = self.validate()
        self._save_epoch(self.metrics)
        self.draw_curves()

    def draw_curves(self) -> None:
        """results.png from log.jsonl (rank 0); without matplotlib, a note once."""
        if not self.is_main or not os.path.isfile(self.log.path):
            return
        try:
            drawn = draw_results(self.log.path, os.path.join(self.out, "results.png"))
        except Exception as error:  # a picture never stops a run
            log.warning("results.png not drawn: %s", error)
            return
        if not drawn and not self._plot_note_shown:
            log.info("matplotlib is not installed: no results.png is drawn (pip install matplotlib)")
            self._plot_note_shown = True

    def _save_epoch(self, validated: Optional[Dict[str, float]]) -> None:
        """last.pt after every epoch; best.pt when the validation AP improves (without
        validation data: the final epoch's)."""
        ap = validated.get("ap50", math.nan) if validated else math.nan
        improved = ap > self.best_ap  # False for NaN
        if improved:
            self.best_ap = ap
        self._save(LAST)
        if self.is_main and (improved or (self.val_set is None and self.epoch == self.config.epochs)):
            temporary = os.path.join(self.out, f".{BEST}.tmp")
            shutil.copyfile(os.path.join(self.out, LAST), temporary)
            os.replace(temporary, os.path.join(self.out, BEST))

    def _restore(self, checkpoint, *parts: str) -> None:
        """Loads ``parts`` of a checkpoint; ValueError in one line where they do not fit."""
        path = self.resume_path
        if (checkpoint["backbone"], checkpoint["dcn"]) != (self.config.backbone, self.config.dcn):
            raise ValueError(
                f"--resume {path}: a damaged training checkpoint: it says {checkpoint['backbone']}, "
                f"dcn={checkpoint['dcn']}, its settings {self.config.backbone}, dcn={self.config.dcn}"
            )
        try:
            for part in parts:
                if part == "rng":
                    restore_random_states(checkpoint["rng"])
                else:
                    getattr(self, part).load_state_dict(checkpoint[part])
            if "optimizer" in parts:
                fit_optimizer_to_run(self.optimizer, self.fused_sgd)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"--resume {path}: the checkpoint does not fit the run it records "
                f"({type(error).__name__}: {first[:300]})"
            ) from error

    def _resume(self, checkpoint) -> None:
        """The rest of the run's state: its schedule, loss scaler, where it stopped, and
        again the optimizer (whose learning rate the new scheduler set) and the random
        draws (which reading the data may have used)."""
        path = self.resume_path
        self._restore(checkpoint, "scheduler", "optimizer", "scaler", "rng")
        self.epoch, self.step, self.step_in_epoch = checkpoint["epoch"], checkpoint["step"], checkpoint["step_in_epoch"]
        self.best_ap, self.metrics = checkpoint["best_ap"], checkpoint["metrics"]
        self._validation_due = bool(checkpoint.get("validation_due", False)) and self.val_set is not None
        if self.is_main:
            log.info("resumed %s: epoch %d, step %d", path, self.epoch + (self.step_in_epoch > 0), self.step)

    # ------------------------------------------------------------------ stops

    def _catch_signals(self):
        def request_stop(number, frame):
            self._stop_requested = signal.Signals(number).name
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)

        previous = {}
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[number] = signal.signal(number, request_stop)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return previous

    def _stop_if_requested(self, collective: bool) -> None:
        """Stops at a signal: one process looks at its own flag before every step (no
        synchronisation); under torchrun every process stops at the same step, so the
        flags are summed, at the window's checks only (``collective``)."""
        requested = self._stop_requested is not None
        if self.dist.enabled:
            if not collective:
                return
            requested = bool(self.dist.sum(torch.tensor(int(requested), device=self.device)).item())
        if requested:
            self._check()  # the window's steps logged (or a bad one found) first
            self._save(LAST, interrupted=True)
            raise TrainingStopped(
                f"stopped by {self._stop_requested or 'another process'} at step {self.step}; "
                f"{os.path.join(self.out, LAST)} resumes it (--resume auto)",
                130,
            )

    def _stop_on_non_finite(self, step: int, values: np.ndarray) -> None:
        bad = [f"{name} = {value}" for name, value in zip(LOSS_PARTS, values) if not np.isfinite(value)]
        good = self.window.restore(self)
        self._save(LAST, interrupted=True)
        raise TrainingStopped(
            f"step {step} (epoch {self.epoch + 1}): {', '.join(bad)}; the weights of step {good} (the last "
            f"checked before it, --log-every {self.config.log_every}) are in {os.path.join(self.out, LAST)}",
            1,
        )
