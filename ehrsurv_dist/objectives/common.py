"""Label checks and loss reductions shared by the survival losses (``survival.py``, ``cox.py``).

Labels follow ``schema``: ``last_visit`` = T (int64 [B]), ``event`` (bool [B]).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ehrsurv_dist.tensors import check_tensor

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_labels(last_visit: Tensor, event: Tensor, batch_size: int) -> None:
    """Validate ``last_visit`` int64 [B] (>= 0) and ``event`` bool [B] for B = ``batch_size``.

    Raises:
        ValueError: naming the argument with the wrong type, rank, dtype, length or value.
    """
    check_tensor(last_visit, "last_visit", ndim=1, dtype=torch.int64)
    check_tensor(event, "event", ndim=1, dtype=torch.bool)
    if last_visit.shape[0] != batch_size:
        raise ValueError(f"last_visit has {last_visit.shape[0]} entries, expected B={batch_size}")
    if event.shape[0] != batch_size:
        raise ValueError(f"event has {event.shape[0]} entries, expected B={batch_size}")
    if batch_size > 0 and int(last_visit.min()) < 0:
        raise ValueError("last_visit must be >= 0")


def check_reduction(reduction: str) -> None:
    """Raises ValueError unless ``reduction`` is one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32: sums of many log terms need the precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def reduce_per_subject(per_subject: Tensor, reduction: str) -> Tensor:
    """``mean``, ``sum`` or ``none`` (unchanged [B]) of per-subject losses [B]."""
    check_reduction(reduction)
    if reduction == "mean":
        return per_subject.mean()
    if reduction == "sum":
        return per_subject.sum()
    return per_subject
