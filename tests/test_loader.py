"""Batching: collate's padded targets feed ops.match as each image alone would; loaders
repeat under a seed, differ across epochs, and draw the same with any number of workers."""

import numpy as np
import pytest
import torch

from retinaface_ext import ops
from retinaface_ext.data import TrainTransform, WiderFaceDataset, collate, make_loader
from retinaface_ext.data.synthetic import make_synthetic_faces
from retinaface_ext.priors import prior_boxes


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return make_synthetic_faces(
        tmp_path_factory.mktemp("loader") / "set", num_train=12, num_val=2, seed=1, image_size=96
    ).train_labels


def items(count, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    result = []
    for n in [3, 0, 7, 1][:count]:
        corner = torch.rand(n, 2, generator=g) * 0.7
        side = 0.05 + torch.rand(n, 2, generator=g) * 0.25
        landmarks = corner.repeat(1, 5) + torch.rand(n, 10, generator=g) * side.repeat(1, 5)
        label = torch.where(torch.rand(n, 1, generator=g) < 0.7, 1.0, -1.0)
        landmarks = torch.where(label > 0, landmarks, torch.full_like(landmarks, -1.0))
        result.append((torch.rand(3, size, size, generator=g), torch.cat([corner, corner + side, landmarks, label], 1)))
    return result


def test_collate_pads_into_what_match_takes_and_equals_matching_each_image_alone():
    batch = collate(items(4))
    assert batch.images.shape == (4, 3, 64, 64)
    assert batch.truths.shape == (4, 7, 4) and batch.landmarks.shape == (4, 7, 10) and batch.labels.shape == (4, 7)
    assert batch.labels.dtype == torch.long and batch.num_truths.tolist() == [3, 0, 7, 1]
    priors = prior_boxes((64, 64))
    together = ops.match(batch.truths, batch.labels, batch.landmarks, batch.num_truths, priors)
    for b, (_, target) in enumerate(items(4)):
        alone = ops.match(
            target[None, :, :4], target[None, :, 14].long(), target[None, :, 4:14], torch.tensor([len(target)]), priors
        )
        for got, expected in zip(together, alone):
            torch.testing.assert_close(got[b], expected[0], rtol=0, atol=0)
    assert (together[1][2] != 0).any()  # the matching did find faces
    for target, original in zip(batch.targets(), items(4)):
        torch.testing.assert_close(target, original[1])


def test_collate_takes_numpy_targets_and_a_batch_without_faces():
    batch = collate([(torch.zeros(3, 8, 8), np.zeros((0, 15), np.float32))] * 2)
    assert batch.truths.shape == (2, 0, 4) and batch.num_truths.tolist() == [0, 0]
    with pytest.raises(ValueError, match="empty"):
        collate([])


def epoch(loader, number=None):
    if number is not None:
        loader.set_epoch(number)
    return [(b.images.clone(), b.truths.clone(), b.num_truths.clone()) for b in loader]


def same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_repeats_under_its_seed_and_changes_with_the_epoch(labels, workers):
    def loader(seed):
        dataset = WiderFaceDataset(labels, transform=TrainTransform(image_size=48))
        return make_loader(dataset, batch_size=4, shuffle=True, num_workers=workers, seed=seed, pin_memory=False)

    first, again, other = loader(5), loader(5), loader(6)
    epoch0 = epoch(first, 0)
    assert same(epoch0, epoch(again, 0))
    assert not same(epoch0, epoch(other, 0))
    epoch1 = epoch(first, 1)
    assert not same(epoch0, epoch1)
    assert same(epoch(first, 0), epoch0)  # an epoch depends on (seed, epoch) alone: resumable
    assert same(epoch(again, 1), epoch1)


def test_the_draws_do_not_depend_on_the_workers_and_persistent_workers_follow_the_epoch(labels):
    """Each item's draws come from (seed, epoch, index): 0, 1 or 2 workers give the same
    batches, and workers that outlive an epoch still draw the next epoch's."""
    dataset = WiderFaceDataset(labels, transform=TrainTransform(image_size=48))
    loaders = [make_loader(dataset, batch_size=4, num_workers=w, seed=3, pin_memory=False) for w in (0, 1, 2)]
    assert [loader.persistent_workers for loader in loaders] == [False, True, True]
    first = [epoch(loader, 0) for loader in loaders]
    second = [epoch(loader, 1) for loader in loaders]  # the same worker processes as epoch 0
    assert same(first[0], first[1]) and same(first[0], first[2])
    assert same(second[0], second[1]) and same(second[0], second[2])
    assert not same(first[0], second[0])
    workers = loaders[2]._iterator._workers
    loaders[2].close()
    assert loaders[2]._iterator is None and not any(worker.is_alive() for worker in workers)
    assert same(epoch(loaders[2], 1), second[0])  # new workers, the same draws


def test_workers_draw_different_augmentations(labels):
    """One image repeated: with two workers no two of its augmented copies are equal."""
    dataset = WiderFaceDataset(labels, transform=TrainTransform(image_size=48))
    dataset.annotations.names[:] = [dataset.annotations.names[0]] * len(dataset)
    dataset.annotations.offsets[1:] = dataset.annotations.offsets[1]
    loader = make_loader(dataset, batch_size=2, shuffle=False, num_workers=2, seed=0, pin_memory=False)
    images = torch.cat([b.images for b in loader])
    flat = images.flatten(1)
    assert len(images) == 12
    assert all(not torch.equal(flat[i], flat[j]) for i in range(12) for j in range(i))


def test_a_distributed_loader_splits_the_images(labels, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        dataset = WiderFaceDataset(labels, transform=TrainTransform(image_size=32))
        loader = make_loader(dataset, batch_size=5, num_workers=0, seed=2, distributed=True, pin_memory=False)
        assert isinstance(loader.sampler.sampler, torch.utils.data.DistributedSampler)
        first = epoch(loader, 0)
        assert sum(len(b[2]) for b in first) == 12
        assert not same(first, epoch(loader, 1)) and same(first, epoch(loader, 0))
    finally:
        dist.destroy_process_group()


def test_bad_loader_arguments_are_named(labels):
    dataset = WiderFaceDataset(labels)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(dataset, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(dataset, batch_size=1, num_workers=-1)
