"""Day bins of the calendar axis: edges, fitted edges, and each sample's loss index (numpy only).

On the calendar axis (the calendar-axis contract, docs/design.md) a sample's time is the number of
days from its prediction time to the event or censoring, capped at the horizon. The model gives K
hazards, one per day bin ``(e_j, e_{j+1}]`` (0-based j) with edges
``0 = e_0 < e_1 < ... < e_K = horizon_days``.

The time index (:func:`bin_index`) follows pycox's ``LabTransDiscreteTime(cuts=edges)``
(``LogisticHazard``): events go to the right edge of their interval, censorings to the left edge,
so that the likelihood of :func:`~ehrsurv_dist.objectives.calendar_nll` is

- event, index j in [0, K): ``log h_j + sum_{l<j} log(1 - h_l)`` (the event's bin is j);
- censored, index j in [0, K]: ``sum_{l<j} log(1 - h_l)``, j = the number of bins survived whole.

A censoring at the horizon survived all K bins, hence index K for censorings (pycox's own index of
a censoring at the last cut). Shape vocabulary: ``N`` samples, ``K`` bins.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def check_edges(edges: npt.ArrayLike, horizon_days: float) -> np.ndarray:
    """Validated bin edges.

    Args:
        edges: ``[e_0, ..., e_K]`` in days, K >= 1.
        horizon_days: the task's horizon, > 0.

    Returns:
        float64 [K + 1].

    Raises:
        ValueError: (one line) if ``horizon_days <= 0``, edges are not a 1-D list of at least two
            finite numbers, do not start at 0, are not strictly increasing, or do not end at the
            horizon.
    """
    if not np.isfinite(horizon_days) or horizon_days <= 0:
        raise ValueError(f"horizon_days must be a finite number > 0, got {horizon_days!r}")
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"bin edges must be a 1-D list of >= 2 numbers, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError(f"bin edges must be finite, got {e.tolist()}")
    if e[0] != 0.0:
        raise ValueError(f"bin edges must start at 0, got e_0={e[0]!r}")
    steps = np.diff(e)
    if (steps <= 0).any():
        j = int(np.argmax(steps <= 0))
        raise ValueError(
            f"bin edges must be strictly increasing, got e_{j}={e[j]!r} >= e_{j + 1}={e[j + 1]!r}"
        )
    if e[-1] != float(horizon_days):
        raise ValueError(
            f"bin edges must end at horizon_days={float(horizon_days)!r}, got e_K={e[-1]!r}"
        )
    return e


def fit_quantile_edges(
    time_days: npt.ArrayLike, event: npt.ArrayLike, k: int, horizon_days: float
) -> np.ndarray:
    """Edges at quantiles of the event times (pass the train split only, never tuning/held-out).

    ``e_0 = 0``, ``e_K = horizon_days``, inner edges ``e_i = quantile(event times, i / k)`` for
    i = 1..k-1 (numpy's default linear interpolation) over the events with
    ``0 < time <= horizon_days``. Inner edges that repeat, that are <= 0 or >= the horizon are
    dropped, so there may be fewer than ``k`` bins, never an empty-width one. With no such event
    the ``k`` bins are evenly spaced.

    Args:
        time_days: float [N], days to the event or censoring.
        event: bool [N].
        k: the number of bins wanted, >= 1.
        horizon_days: > 0.

    Returns:
        float64 [K' + 1] with K' <= k, valid for :func:`check_edges`.

    Raises:
        ValueError: if ``k < 1``, ``horizon_days <= 0`` or the arrays' shapes differ.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k (number of bins) must be an integer >= 1, got {k!r}")
    if not np.isfinite(horizon_days) or horizon_days <= 0:
        raise ValueError(f"horizon_days must be a finite number > 0, got {horizon_days!r}")
    t = np.asarray(time_days, dtype=np.float64)
    d = np.asarray(event, dtype=bool)
    if t.shape != d.shape or t.ndim != 1:
        raise ValueError(f"time_days and event must be 1-D of one length, got {t.shape}, {d.shape}")
    h = float(horizon_days)
    times = t[d & (t > 0) & (t <= h)]
    if times.size == 0:
        return check_edges(np.linspace(0.0, h, int(k) + 1), h)
    inner = np.quantile(times, np.arange(1, int(k)) / k) if k > 1 else np.empty(0)
    inner = np.unique(inner[(inner > 0) & (inner < h)])
    return check_edges(np.concatenate(([0.0], inner, [h])), h)


def bin_index(time_days: npt.ArrayLike, event: npt.ArrayLike, edges: npt.ArrayLike) -> np.ndarray:
    """The loss's time index of each sample (pycox's ``LabTransDiscreteTime`` convention).

    With pycox's cuts = ``edges`` (its column 0 is the cut at 0, our column j-1 is its column j)
    and ``p`` = pycox's index:

    - event at ``t`` in ``(e_j, e_{j+1}]`` (right-closed, so an event exactly at an edge belongs to
      the bin that edge closes): index ``j = p - 1`` in [0, K). An event at ``t = 0`` (pycox's
      cut-0 column, which we do not have) is put in the first bin, index 0.
    - censoring at ``t`` in ``[e_j, e_{j+1})`` (left-closed, so a censoring exactly at an edge has
      survived the bin that edge closes): index ``j = p`` in [0, K] = the number of bins survived
      whole; a censoring at the horizon gets K. A censoring at ``t = 0`` gets 0.
    - ``t > horizon``: censored at the horizon (index K), whatever ``event`` says (pycox's
      ``right_censor``).

    Args:
        time_days: float [N], >= 0.
        event: bool [N].
        edges: float [K + 1] (see :func:`check_edges`; the horizon is ``edges[-1]``).

    Returns:
        int64 [N]: events in [0, K), censorings in [0, K].

    Raises:
        ValueError: on invalid edges, shapes that differ, or a time that is negative or NaN.
    """
    e = np.asarray(edges, dtype=np.float64)
    e = check_edges(e, float(e[-1]) if e.ndim == 1 and e.size else 0.0)
    t = np.asarray(time_days, dtype=np.float64)
    d = np.asarray(event, dtype=bool)
    if t.shape != d.shape or t.ndim != 1:
        raise ValueError(f"time_days and event must be 1-D of one length, got {t.shape}, {d.shape}")
    if t.size and not (t >= 0).all():  # also catches NaN
        i = int(np.argmax(~(t >= 0)))
        raise ValueError(f"time_days must be >= 0 and not NaN, got {t[i]!r} at row {i}")
    K = e.size - 1
    over = t > e[-1]
    d = d & ~over
    # events: the bin whose right edge is the first edge >= t -> searchsorted(left) - 1
    ev = np.searchsorted(e, t, side="left") - 1
    # censorings: the number of edges e_1..e_K that are <= t -> searchsorted(right) - 1
    ce = np.searchsorted(e, t, side="right") - 1
    out = np.where(d, np.maximum(ev, 0), np.minimum(ce, K))
    return out.astype(np.int64)
