"""Batches for training: images stacked, faces padded into exactly what
:func:`retinaface_ext.ops.match` takes, and data loaders whose random draws repeat."""

import os
import random
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from ..models.config import whole_number
from ..targets import WIDTH, split_rows
from .transforms import MEAN_BGR

#: The most loader workers a process gets by default.
MAX_DEFAULT_WORKERS = 8


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

    def normalized(
        self, mean: Sequence[float] = MEAN_BGR, memory_format: torch.memory_format = torch.contiguous_format
    ) -> "Batch":
        """uint8 images (``TrainTransform(subtract_mean=False)``) as float32 minus
        ``mean``, on their device, written in ``memory_format`` in the same pass; float
        images are only laid out in it."""
        if self.images.is_floating_point():
            return self._replace(images=self.images.contiguous(memory_format=memory_format))
        mean = torch.tensor(mean, dtype=torch.float32, device=self.images.device)[:, None, None]
        images = torch.empty(
            self.images.shape, dtype=torch.float32, device=self.images.device, memory_format=memory_format
        )
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


def mixed_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from several integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0] >> 1)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for one (run seed, epoch, process) triple."""
    return mixed_seed(seed, epoch, rank)


class KeyedSampler(Sampler):
    """``sampler``'s indices as ``(index, seed)`` keys: the seed is the epoch's, so that
    an item's random draws depend on (run seed, epoch, index) alone, not on which worker
    loads it, how many there are, or whether they outlive an epoch."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.seed = sampler, 0

    def __iter__(self):
        seed = self.seed
        return ((int(index), seed) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class Reseeded(Dataset):
    """``dataset[index]`` for a key ``(index, seed)`` of :class:`KeyedSampler`, with the
    dataset's draws reseeded from (seed, index) first (where it has ``reseed``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(mixed_seed(seed, index))
        return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    """Seeds Python's and numpy's global generators in a loader worker from the seed torch
    gave it (for transforms of one's own that draw from them; ours are reseeded per item)."""
    seed = torch.initial_seed() % 2**63
    random.seed(seed)
    np.random.seed(seed % 2**32)


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

    def close(self) -> None:
        """Stops the persistent workers now (they would otherwise live as long as the loader);
        the next iteration starts new ones."""
        if self._iterator is not None and hasattr(self._iterator, "_shutdown_workers"):
            self._iterator._shutdown_workers()
        self._iterator = None

    def set_epoch(self, epoch: int) -> None:
        """Makes epoch ``epoch``'s order and augmentation depend on (seed, epoch) alone,
        so that a resumed run repeats an uninterrupted one."""
        self.sampler.seed = epoch_seed(self.seed, epoch)
        self.order.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        if isinstance(self.sampler.sampler, DistributedSampler):
            self.sampler.sampler.set_epoch(epoch)


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


def usable_workers(requested: int, batches: int) -> int:
    """``requested`` loader workers, at most what can work at once: the CPUs this
    process may use, and the batches of an epoch (each worker makes whole batches)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(whole_number(requested, "workers", 0), max(1, cpus), max(1, batches))


def default_workers(processes: int = 1) -> int:
    """Loader workers per process: the CPUs this process may use
    (``os.sched_getaffinity``), shared among ``processes`` on the machine, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(1, processes)))


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

    The order comes from a generator seeded with ``seed``; each item's random draws from
    (seed, epoch, index) (the dataset's ``reseed``, called before each item), so they are
    the same with any number of workers. Call ``loader.set_epoch(epoch)`` before each
    epoch to make it a function of the epoch (needed with ``distributed``, where a
    :class:`DistributedSampler` splits the images among the processes of the default
    process group). Workers persist from epoch to epoch.
    """
    batch_size, num_workers = whole_number(batch_size, "batch_size"), whole_number(num_workers, "num_workers", 0)
    rank = 0
    # The order's own generator: the loader draws its workers' base seed from the other
    # one on a fresh start but not when persistent workers go on.
    order = torch.Generator()
    if distributed:
        rank = torch.distributed.get_rank()
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = RandomSampler(dataset, generator=order) if shuffle else SequentialSampler(dataset)
    loader = FaceLoader(
        Reseeded(dataset),
        batch_size=int(batch_size),
        sampler=KeyedSampler(sampler),
        num_workers=int(num_workers),
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=torch.Generator(),
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=int(num_workers) > 0,
    )
    loader.seed, loader.rank, loader.order = int(seed), rank, order
    loader.set_epoch(0)
    return loader
