"""Data-parallel runs under ``torchrun``: which process this is, and the few collectives used.

Why torchrun and ``torch.distributed`` (DDP) rather than Hugging Face Accelerate: both
launch the same processes and average gradients with the same NCCL/gloo all-reduce,
but torchrun ships with torch, which every ComfyUI install already has, so nothing new
is installed, and DDP's behaviour (bucketed all-reduce during the backward pass,
``no_sync`` for accumulation) is documented by torch itself. Accelerate would add a
dependency and a configuration file for the same work.

Nothing here launches processes or reduces gradients: torchrun starts the processes
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``torch.nn.parallel.DistributedDataParallel`` averages the gradients. This module only
reads that environment, opens the process group (NCCL on GPUs, gloo on the CPU) and
wraps the handful of calls the pack needs (barrier, all-gather of Python objects, the
mean of the logged loss). A plain ``python . train`` is a world of one: every call here
is then a no-op and nothing touches ``torch.distributed``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world`` (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""  # "" when no process group is open (a world of one)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of a run (checkpoints, loss.csv, previews, reports) and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return bool(self.backend)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world``-th one starting at ``rank`` (a deterministic split)."""
        return list(items[self.rank::self.world])

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def mean(self, value: float, device: torch.device | None = None) -> float:
        """The mean of a number over the ranks (the logged loss of the global batch)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64,
                              device=device if self.backend == "nccl" else "cpu")
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (so every rank takes the same branch)."""
        return any(self.gather(bool(flag)))

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.backend = ""


def from_environment() -> DistContext:
    """The context torchrun's variables describe; opens the process group when ``WORLD_SIZE`` > 1.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (``torch.cuda.set_device``),
    before ComfyUI picks its device, so ComfyUI's ``get_torch_device()`` returns it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if world <= 1:
        return DistContext()
    if not torch.distributed.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun (one process)")
    import comfy.model_management as mm

    cuda = mm.get_torch_device().type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    ctx = DistContext(rank, world, local_rank, backend)
    if not ctx.is_main:
        # One rank logs: the others would repeat every line. Errors still show from every rank.
        logging.getLogger().setLevel(logging.ERROR)
    log.info("data-parallel run: %d processes (%s), this is rank %d", world, backend, rank)
    return ctx
