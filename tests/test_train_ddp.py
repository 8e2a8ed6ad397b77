"""Two gloo processes under torchrun, each with half of the global batch, train the same
parameters as one process with all of it (BatchNorm frozen, deterministic data); one
process under torchrun joins a process group too (gloo on the CPU, NCCL on a GPU)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from retinaface_ext.data.synthetic import make_synthetic_faces

SCRIPT = textwrap.dedent("""
    import sys
    import cv2
    import torch
    from retinaface_ext.data import TrainTransform, make_loader
    from retinaface_ext.train import TrainConfig, Trainer
    from retinaface_ext.train.options import SyntheticDefaults

    cache, out, weights = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    config = TrainConfig(data="synthetic", synthetic_dir=cache, out=out, workers=0, epochs=1, batch_size=4,
                         image_size=64, lr=0.05, warmup_epochs=0, dcn=True, device=device,
                         synthetic=SyntheticDefaults(num_train=16, num_val=0, source_size=96))
    trainer = Trainer(config, freeze_batchnorm=True, show_progress=False)
    # Deterministic items and the same global batches with one process or two.
    trainer.train_set.transform = TrainTransform(64, crop_tries=0, distort=False, mirror=False,
                                                 interpolations=(cv2.INTER_LINEAR,))
    trainer.loader = make_loader(trainer.train_set, 4 // trainer.dist.world_size, shuffle=False, num_workers=0,
                                 distributed=trainer.dist.enabled, pin_memory=False)
    trainer.fit()
    if trainer.dist.is_main:
        torch.save(trainer.model.state_dict(), weights)
    if torch.distributed.is_initialized():
        print(f"backend {torch.distributed.get_backend()}, world size {torch.distributed.get_world_size()}")
    trainer.dist.close()
""")


def test_two_processes_train_what_one_does(tmp_path):
    cache = tmp_path / "cache"
    make_synthetic_faces(cache / "16-0-96px", num_train=16, num_val=0, seed=0, image_size=96)
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    one = subprocess.run(
        [sys.executable, str(script), str(cache), str(tmp_path / "one"), str(tmp_path / "one.pt")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(cache),
            str(tmp_path / "two"),
            str(tmp_path / "two.pt"),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, split = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key, value in single.items():
        torch.testing.assert_close(split[key], value, rtol=1e-4, atol=1e-5, msg=key)
    with open(tmp_path / "two" / "log.jsonl") as handle:
        assert sum('"event": "step"' in line for line in handle) == 4  # rank 0 alone logs


def torchrun(tmp_path, name, processes, *extra):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += [str(script), str(tmp_path / "cache"), str(tmp_path / name), str(tmp_path / f"{name}.pt"), *extra]
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
            ],
        ),
    ],
)
def test_one_process_under_torchrun_trains_in_a_process_group(tmp_path, device):
    make_synthetic_faces(tmp_path / "cache" / "16-0-96px", num_train=16, num_val=0, seed=0, image_size=96)
    result = torchrun(tmp_path, "single", 1, device)
    assert result.returncode == 0, result.stderr[-3000:]
    backend = "nccl" if device == "cuda" else "gloo"
    assert f"backend {backend}, world size 1" in result.stdout
    with open(tmp_path / "single" / "log.jsonl") as handle:
        assert sum('"event": "step"' in line for line in handle) == 4
