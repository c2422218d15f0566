"""Checked inputs of the day-scale metrics: edges, times, survival, one split (``_Split``), the
step function between edges and the time keys of the pair counts.

Conventions: :mod:`ehrsurv_dist.metrics.calendar`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ehrsurv_dist.metrics.inputs import BoolArray, FloatArray, IntArray, as_event


def check_edges(edges: npt.ArrayLike) -> FloatArray:
    """Validated bin edges: float64 ``[K + 1]``, ``K ≥ 1``, ``e_0 = 0``, strictly increasing."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.shape[0] < 2:
        raise ValueError(f"edges: expected a 1-D array of K + 1 >= 2 edges, got shape {e.shape}")
    if not np.all(np.isfinite(e)) or e[0] != 0.0 or not np.all(np.diff(e) > 0):
        raise ValueError(f"edges: must start at 0 and increase strictly, got {e.tolist()}")
    return e


def check_times(time_days: npt.ArrayLike, name: str, n: int | None = None) -> FloatArray:
    """Validated observed times in days: finite float64 ``[N] ≥ 0``, non-empty."""
    t = np.asarray(time_days)
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {t.shape}")
    if t.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric dtype, got {t.dtype}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name}: length {t.shape[0]} does not match {n} samples")
    out = t.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)) or out.min() < 0:
        raise ValueError(f"{name}: times must be finite and >= 0")
    return out


def check_survival(survival: npt.ArrayLike, k: int | None = None) -> npt.NDArray[np.floating]:
    """Validated survival ``[N, K]`` (float dtype kept: pycox compares it as given), in [0, 1]."""
    s = np.asarray(survival)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"survival: expected a non-empty [N, K] array, got shape {s.shape}")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    if k is not None and s.shape[1] != k:
        raise ValueError(f"survival: {s.shape[1]} columns, but edges give K = {k} bins")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise ValueError("survival: values must be finite and within [0, 1]")
    return s


@dataclass(frozen=True)
class _Split:
    """The checked inputs of :func:`calendar_metrics`."""

    survival: npt.NDArray[np.floating]  # [N, K]
    edges: FloatArray  # [K + 1]
    time: FloatArray  # [N]
    event: BoolArray  # [N]
    subject: IntArray  # [N]
    train_time: FloatArray  # [M]
    train_event: BoolArray  # [M]

    @property
    def horizon(self) -> float:
        return float(self.edges[-1])


def _check_split(
    survival: npt.ArrayLike,
    edges: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    subject_id: npt.ArrayLike,
    train_time_days: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> _Split:
    e = check_edges(edges)
    s = check_survival(survival, e.shape[0] - 1)
    n = s.shape[0]
    t = check_times(time_days, "time_days", n)
    ev = as_event(event, "event", n)
    sid = np.asarray(subject_id)
    if sid.ndim != 1 or sid.shape[0] != n or sid.dtype.kind not in "iu":
        raise ValueError(f"subject_id: expected int [{n}], got {sid.dtype} {sid.shape}")
    tt = check_times(train_time_days, "train_time_days")
    tev = as_event(train_event, "train_event", tt.shape[0])
    return _Split(s, e, t, ev, sid.astype(np.int64), tt, tev)


def edge_index(edges: npt.ArrayLike, times: npt.ArrayLike) -> IntArray:
    """Column of ``survival`` that predicts at each time (pycox ``idx_at_times``, ``"pre"``).

    ``searchsorted(e_1..e_K, t, "left")`` clipped to ``[0, K − 1]``: a time in ``(e_{j-1}, e_j]``
    uses ``S(e_j)``, a time ``≤ e_1`` uses ``S(e_1)``, a time beyond ``e_K`` uses ``S(e_K)``.

    Args:
        edges: float ``[K + 1]``.
        times: float ``[T]``.

    Returns:
        int64 ``[T]`` in ``[0, K − 1]``.
    """
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e[1:], np.asarray(times, dtype=np.float64), side="left")
    return np.clip(idx, 0, e.shape[0] - 2).astype(np.int64)


def survival_at_days(
    survival: npt.ArrayLike, edges: npt.ArrayLike, days: npt.ArrayLike
) -> FloatArray:
    """The step-function survival at given days (see :func:`edge_index`): float64 ``[N, T]``."""
    s = np.asarray(survival)
    return s[:, edge_index(edges, np.atleast_1d(np.asarray(days)))].astype(np.float64)


def time_keys(time_days: FloatArray, event: BoolArray) -> IntArray:
    """Integer keys that order comparability: j is comparable to an event i iff key_j > key_i.

    ``2 · rank(t) + (0 for an event, 1 for a censoring)`` with dense ranks of the times: a later
    time, or a censoring at the same time as an event, has a larger key; two events at one time,
    or a sample and itself, have equal keys.
    """
    _, rank = np.unique(time_days, return_inverse=True)
    return 2 * rank.astype(np.int64) + (~event).astype(np.int64)


def _dense_rank(values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], IntArray]:
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq, inv.astype(np.int64)
