"""The processes of a fine-tuning run and the device each one trains on: one process, or this rank of a
``torchrun`` launch (process group from the environment: NCCL on GPUs, gloo on CPUs); and the mixed
precision that device uses."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from shelfsight.adapt.finetune_config import FinetuneConfig


@dataclass(frozen=True)
class Processes:
    """This process's rank among ``world`` processes, its device, and whether it started the process group."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over processes (float64 on the training device)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def gather(self, value: float) -> list[float]:
        """``value`` from every process, in rank order."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return [float(v) for v in gathered]


def start_processes(device: str) -> Processes:
    """One process, or this rank of a ``torchrun`` launch (process group from the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world == 1 and not dist.is_initialized():
        return Processes(0, 1, chosen, owns_group=False)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), chosen, owns_group=owns)


def stop_processes(processes: Processes) -> None:
    """Destroys the process group if ``start_processes`` created it."""
    if processes.owns_group:
        dist.destroy_process_group()


def amp_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``config.amp`` on ``device`` (CUDA only), or None for full precision."""
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def autocast(amp: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision in ``amp`` on ``device``, or nothing when ``amp`` is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)
