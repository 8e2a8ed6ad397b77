"""Batches for training: images stacked, faces padded into exactly what
:func:`retinaface_ext.ops.match` takes, and data loaders whose random draws repeat."""

import random
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from ..targets import WIDTH, split_rows
from .transforms import MEAN_BGR


class Batch(NamedTuple):
    """``images [B, 3, S, S]`` (float32, or uint8 before :meth:`normalized`);
    ``truths [B, G, 4]``, ``labels [B, G]`` int64,
    ``landmarks [B, G, 10]`` and ``num_truths [B]`` int64, G the largest face count of the
    batch (rows past ``num_truths[b]`` are zeros)."""

    images: torch.Tensor
    truths: torch.Tensor
    labels: torch.Tensor
    landmarks: torch.Tensor
    num_truths: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def normalized(self, mean: Sequence[float] = MEAN_BGR) -> "Batch":
        """uint8 images (``TrainTransform(subtract_mean=False)``) as float32 minus
        ``mean``, on their device; float images are returned as they are."""
        if self.images.is_floating_point():
            return self
        mean = torch.tensor(mean, dtype=torch.float32, device=self.images.device)[:, None, None]
        images = torch.empty(self.images.shape, dtype=torch.float32, device=self.images.device)
        return self._replace(images=torch.sub(self.images, mean, out=images))

    def targets(self) -> List[torch.Tensor]:
        """The seed's form: one ``[G_i, 15]`` tensor per image."""
        rows = torch.cat([self.truths, self.landmarks, self.labels[..., None].to(self.truths.dtype)], -1)
        return [rows[b, :n] for b, n in enumerate(self.num_truths.tolist())]


def collate(batch: Sequence) -> Batch:
    """``[(image [3, S, S], target [G_i, 15]), ...]`` (what :class:`TrainTransform`
    gives) into one :class:`Batch`; the targets may be tensors or numpy arrays."""
    if len(batch) == 0:
        raise ValueError("collate: the batch is empty")
    # default_collate stacks straight into shared memory inside a loader worker (one copy less).
    images = default_collate([torch.as_tensor(image) for image, _ in batch])
    targets = [torch.as_tensor(target, dtype=torch.float32).reshape(-1, WIDTH) for _, target in batch]
    counts = [len(t) for t in targets]
    padded = torch.zeros(len(batch), max(counts), WIDTH)
    for b, target in enumerate(targets):
        padded[b, : len(target)] = target
    truths, labels, landmarks = split_rows(padded)
    return Batch(
        images, truths.contiguous(), labels.long(), landmarks.contiguous(), torch.tensor(counts, dtype=torch.long)
    )


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for one (run seed, epoch, process) triple."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_worker(worker_id: int) -> None:
    """Seeds a loader worker from the seed torch gave it (the loader's base seed, drawn
    from its generator for each epoch, plus the worker id): Python's and numpy's
    generators and the dataset's transform, so that workers differ from each other and
    from epoch to epoch, and a run with the same seed repeats."""
    seed = torch.initial_seed() % 2**63
    random.seed(seed)
    np.random.seed(seed % 2**32)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


class FaceLoader(DataLoader):
    """A DataLoader with :meth:`set_epoch`, made by :func:`make_loader`. A bad image or
    label met in a worker process raises what it would raise in this one (the worker's
    message without its traceback: "cannot decode image file: ..."), not torch's
    "Caught ValueError in DataLoader worker process 0" and a traceback."""

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (ValueError, OSError) as error:
                raise _without_worker_traceback(error) from error
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Makes epoch ``epoch``'s order and augmentation depend on (seed, epoch, rank)
        alone, so that a resumed run repeats an uninterrupted one."""
        seed = epoch_seed(self.seed, epoch, self.rank)
        self.generator.manual_seed(seed)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if self.num_workers == 0 and hasattr(self.dataset, "reseed"):
            self.dataset.reseed(seed)


def _without_worker_traceback(error: Exception) -> Exception:
    """The worker's own message of an error that torch re-raised from a worker process."""
    text = str(error).rstrip()
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return error
    last = text.splitlines()[-1]  # "ValueError: cannot decode image file: ..."
    message = last.split(": ", 1)[1] if ": " in last else last
    try:
        return type(error)(message)
    except Exception:  # an error type that takes other arguments
        return ValueError(message)


def make_loader(
    dataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: Optional[bool] = None,
) -> FaceLoader:
    """A loader of :class:`Batch` es with repeatable randomness.

    Shuffling and the workers' seeds come from a generator seeded with ``seed``; each
    worker reseeds the dataset's transform (:func:`seed_worker`). Call
    ``loader.set_epoch(epoch)`` before each epoch to make it a function of the epoch
    (needed with ``distributed``, where a :class:`DistributedSampler` splits the images
    among the processes of the default process group).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    rank = 0
    sampler = None
    if distributed:
        rank = torch.distributed.get_rank()
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(epoch_seed(seed, 0, rank))
    if num_workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(epoch_seed(seed, 0, rank))
    loader = FaceLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=int(num_workers),
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )
    loader.seed, loader.rank = int(seed), rank
    return loader
