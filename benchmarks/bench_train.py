"""A training step (forward, loss, backward, SGD step) of MobileNet-0.25 at 640x640, with
and without DCN: ours (MultiBoxLoss on one batched match; our deformable convolution) vs
the reference (the seed's MultiBoxLoss with its per-image match loop; torchvision's
deform_conv2d for DCN). Batch 8 on the CPU, 32 on CUDA, where bf16 autocast rows stand
beside the float32 ones (the forward under autocast, the loss in float32); our DCN step
with the speed options of ``retinaface train`` (channels-last, fused SGD, bf16). And the
loss alone (matching included), with 8 and with 100 faces per image.

    pytest --benchmark benchmarks/bench_train.py
"""

import contextlib

import pytest
import torch
from seed_reference import SeedMultiBoxLoss

from retinaface_ext import RetinaFace
from retinaface_ext import nn as retinaface_nn
from retinaface_ext.loss import MultiBoxLoss
from retinaface_ext.priors import prior_boxes
from retinaface_ext.train import Trainer
from retinaface_ext.train.options import SyntheticDefaults, TrainConfig
from retinaface_ext.train.window import LOG_EVERY

SIZE = 640
BATCH = {"cpu": 8, "cuda": 32}
PRECISIONS = ["float32", "bf16_autocast"]


def face_targets(faces, batch, seed=0):
    """Per image [faces, 15]: faces of 8 to 200 px at 640, landmarks inside, a quarter
    without landmarks."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        side = (8 + torch.rand(faces, 1, generator=g) ** 2 * 192) / SIZE
        corner = torch.rand(faces, 2, generator=g) * (1 - side)
        landmarks = corner.repeat(1, 5) + torch.rand(faces, 10, generator=g) * side.repeat(1, 10)
        label = torch.where(torch.rand(faces, 1, generator=g) < 0.75, 1.0, -1.0)
        targets.append(torch.cat([corner, corner + side.expand(-1, 2), landmarks, label], 1))
    return targets


def training_step(dcn, impl, device, precision="float32", channels_last=False, fused=False):
    torch.manual_seed(0)
    batch = BATCH[device]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = RetinaFace("mobilenet0.25", dcn=dcn).to(device).train().to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4, fused=fused)
    priors = prior_boxes((SIZE, SIZE), device=device)
    images = (torch.randn(batch, 3, SIZE, SIZE) * 50).to(device).contiguous(memory_format=layout)
    targets = [t.to(device) for t in face_targets(8, batch)]
    criterion = MultiBoxLoss() if impl == "ours" else SeedMultiBoxLoss()
    autocast = precision == "bf16_autocast"

    def step():
        with torch.autocast("cuda", torch.bfloat16) if autocast else contextlib.nullcontext():
            predictions = model(images)
        loss_l, loss_c, loss_landm = criterion([p.float() for p in predictions], priors, targets)
        loss = 2.0 * loss_l + loss_c + loss_landm
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def rounds(device, cpu, cuda):
    return dict(rounds=cpu if device == "cpu" else cuda, iterations=1, warmup_rounds=1 if device == "cpu" else 3)


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def bench_training_step(benchmark, monkeypatch, synchronized, device, dcn, precision, impl):
    if precision != "float32" and device == "cpu":
        pytest.skip("autocast rows on CUDA only (the CPU kernels are float32 / float64)")
    benchmark.group = (
        f"training step {device} MobileNet-0.25{' + DCN' if dcn else ''}, batch {BATCH[device]}, "
        f"{SIZE}x{SIZE}, 8 faces/image, {precision}"
    )
    if impl == "reference" and dcn:
        torchvision_ops = pytest.importorskip("torchvision.ops")
        monkeypatch.setattr(retinaface_nn, "deform_conv2d", torchvision_ops.deform_conv2d)
    step = training_step(dcn, impl, device, precision)
    benchmark.pedantic(synchronized(step, device), **rounds(device, cpu=3, cuda=10))


@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def bench_dcn_cost(benchmark, synchronized, device, dcn):
    """Our step with and without DCN side by side, more rounds: what DCN costs."""
    benchmark.group = (
        f"ours: training step {device} MobileNet-0.25 with and without DCN, batch {BATCH[device]}, {SIZE}x{SIZE}"
    )
    step = training_step(dcn, "ours", device)
    benchmark.pedantic(synchronized(step, device), **rounds(device, cpu=8, cuda=20))


OPTIONS = {  # what `retinaface train` does with each of its speed options
    "default": {},
    "channels_last": dict(channels_last=True),
    "fused_sgd": dict(fused=True),
    "channels_last+fused_sgd": dict(channels_last=True, fused=True),
    "channels_last+fused_sgd+bf16": dict(channels_last=True, fused=True, precision="bf16_autocast"),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def bench_step_options(benchmark, synchronized, device, option):
    """Our DCN step with the training's speed options (--channels-last; the fused SGD of
    CUDA runs; bf16 autocast), side by side."""
    if option != "default" and option != "channels_last" and device == "cpu":
        pytest.skip("fused SGD and autocast rows on CUDA only")
    benchmark.group = (
        f"ours: training step {device} MobileNet-0.25 + DCN, batch {BATCH[device]}, {SIZE}x{SIZE}, options"
    )
    step = training_step(True, "ours", device, **OPTIONS[option])
    benchmark.pedantic(synchronized(step, device), **rounds(device, cpu=3, cuda=20))


@pytest.mark.parametrize("impl", ["ours", "seed"])
@pytest.mark.parametrize("faces", [8, 100])
def bench_loss(benchmark, faces, impl):
    batch = BATCH["cpu"]
    benchmark.group = f"MultiBoxLoss forward + backward, batch {batch}, {SIZE}x{SIZE}, {faces} faces/image"
    priors = prior_boxes((SIZE, SIZE))
    g = torch.Generator().manual_seed(1)
    predictions = [torch.randn(batch, len(priors), k, generator=g).requires_grad_() for k in (4, 2, 10)]
    targets = face_targets(faces, batch)
    criterion = MultiBoxLoss() if impl == "ours" else SeedMultiBoxLoss()

    def loss():
        sum(criterion(predictions, priors, targets)).backward()

    benchmark.pedantic(loss, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("log_every", [1, LOG_EVERY], ids=["read_every_step", f"read_every_{LOG_EVERY}"])
def bench_trainer_epoch(benchmark, synchronized, device, tmp_path_factory, log_every):
    """An epoch of the Trainer itself (20 steps of MobileNet-0.25 + DCN, batch 4, 128 px,
    synthetic faces, no validation) with the losses read back after every step, as before
    0.2, and every ``--log-every`` steps: what the loop's host synchronisations cost."""
    folder = tmp_path_factory.mktemp("trainer_epoch")
    config = TrainConfig(
        data="synthetic",
        synthetic_dir=str(folder / "set"),
        synthetic=SyntheticDefaults(num_train=80, num_val=0, source_size=160),
        out=str(folder / "run"),
        exist_ok=True,
        device=device,
        workers=0,
        epochs=1000,
        batch_size=4,
        image_size=128,
        dcn=True,
        log_every=log_every,
    )
    trainer = Trainer(config, show_progress=False)
    benchmark.group = f"Trainer: an epoch of 20 steps {device}, MobileNet-0.25 + DCN, batch 4, 128x128"
    benchmark.extra_info["images"] = 80

    def epoch():
        trainer._train_epoch()
        trainer.epoch, trainer.step_in_epoch = trainer.epoch + 1, 0

    benchmark.pedantic(synchronized(epoch, device), **rounds(device, cpu=3, cuda=5))
