"""One process or many under ``torchrun``: the process group, the device, and the
loss divisors shared by all processes."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: launched by torchrun (even with one process): a process group and DDP
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device=None) -> "Distributed":
        """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK and joins the process group
        (NCCL on GPUs, gloo on CPUs), with one process too (``--nproc_per_node 1``);
        one process without a group when not launched so."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if "RANK" not in os.environ or world_size < 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world_size, local_rank, enabled=True)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (itself with one)."""
        if not self.enabled:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
