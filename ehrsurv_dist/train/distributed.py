"""The process group as the engines and the loop see it: ``torch.distributed`` only (Ray
Train's ``TorchTrainer`` initialises it on each worker; this module imports no Ray)."""

from __future__ import annotations

import contextlib
import os
import socket

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ensure_process_group(backend: str = "gloo") -> bool:
    """Initialise a world-size-1 process group if none exists (DeepSpeed needs one).

    Sets ``MASTER_ADDR`` (127.0.0.1), ``MASTER_PORT`` (a free port), ``RANK``, ``LOCAL_RANK`` and
    ``WORLD_SIZE`` in ``os.environ`` where unset, as DeepSpeed also reads them.

    Returns:
        True if this call created the group (the caller may ``destroy_process_group`` it).

    Raises:
        RuntimeError: if ``WORLD_SIZE`` says several processes but none initialised a group: a
            world-size-1 group would silently train each rank alone.
    """
    if dist.is_initialized():
        return False
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise RuntimeError(
            f"WORLD_SIZE={world} but no process group is initialised; the launcher (Ray Train, "
            "torchrun) must initialise it before the engine is built"
        )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key in ("RANK", "LOCAL_RANK"):
        os.environ.setdefault(key, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend, rank=0, world_size=1)
    return True


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """``values`` summed (``op="sum"``) or maxed (``"max"``) over the ranks, as float64."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()
