"""Percentile bootstrap intervals over subjects, deterministic for a seed (docs/design.md §4).

Replicate b draws N subject indices with replacement from ``numpy.random.default_rng(seed)``;
every metric of a split sees the same draws, so their intervals describe the same resamples.
Pure numpy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ehrsurv_dist.metrics.brier import integrated_brier
from ehrsurv_dist.metrics.concordance import TdConcordance, harrell_c, uno_c
from ehrsurv_dist.metrics.hazards import HazardTable
from ehrsurv_dist.metrics.inputs import BoolArray, FloatArray, IntArray


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[IntArray]:
    """``n_boot`` draws of ``n`` subject indices with replacement, int64 ``[n]`` each."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)


def percentile_interval(values: Sequence[float], alpha: float) -> tuple[float, float]:
    """``(alpha / 2, 1 − alpha / 2)`` quantiles of the finite ``values``; NaNs when none is."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _take(a: Any, idx: IntArray) -> Any:
    if isinstance(a, np.ndarray):
        return a[idx]
    return [a[int(i)] for i in idx]  # ragged hazards: a list of 1-D arrays


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric, resampling subjects with replacement.

    Replicate b draws N subject indices from ``numpy.random.default_rng(seed)`` and calls
    ``metric_fn(*[a[idx] for a in arrays])``; the same seed gives the same interval. Replicates
    where the metric is NaN (e.g. no comparable pair) are left out.

    Args:
        metric_fn: called with the resampled arrays, returns a float.
        *arrays: per-subject arrays of equal length N (numpy arrays, indexed along axis 0, or
            sequences such as ragged hazard lists).
        n_boot: number of replicates, ``≥ 1``.
        seed: RNG seed.
        alpha: the interval covers ``1 − alpha``.

    Returns:
        ``(lo, hi)``; NaNs when every replicate is NaN.

    Raises:
        ValueError: no arrays, unequal lengths, empty input, bad ``n_boot`` or ``alpha``.
    """
    if not arrays:
        raise ValueError("arrays: at least one per-subject array is needed")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays: unequal lengths {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("arrays: empty")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    values = [
        metric_fn(*[_take(a, idx) for a in arrays]) for idx in bootstrap_indices(n, n_boot, seed)
    ]
    return percentile_interval(values, alpha)


def td_concordance_interval(
    td: TdConcordance, n: int, n_boot: int, seed: int, alpha: float
) -> tuple[float, float]:
    """Bootstrap interval of Antolini's td-C without re-sorting: a draw becomes subject weights.

    Args:
        td: the prepared concordance of the split (N = ``n`` subjects).
        n: number of subjects N.
        n_boot: replicates, ``≥ 1``.
        seed: RNG seed (the draws of :func:`bootstrap_indices`).
        alpha: the interval covers ``1 − alpha``.
    """
    draws = (np.bincount(i, minlength=n) for i in bootstrap_indices(n, n_boot, seed))
    return percentile_interval([td.score(w.astype(np.float64)) for w in draws], alpha)


def resampled_metrics(
    table: HazardTable,
    risk: FloatArray,
    ev: BoolArray,
    train: tuple[IntArray, BoolArray],
    tau: float | None,
    grid: IntArray | None,
    n_boot: int,
    seed: int,
    tied_tol: float,
) -> dict[str, list[float]]:
    """Harrell's C, Uno's C and the IBS on the draws of :func:`td_concordance_interval`.

    Uno's tau and the IBS grid stay those of the full split, so every replicate estimates the
    same quantity. A replicate where a metric is undefined (e.g. no event drawn) counts as NaN
    and is left out of the interval.

    Args:
        table: the split's hazards (N subjects).
        risk: float ``[N]`` scalar risk scores.
        ev: bool ``[N]``.
        train: ``(last_visit, event)`` of the train split (censoring distribution).
        tau: Uno's truncation time of the full split.
        grid: the full split's IBS grid, or None to leave the IBS out.
        n_boot: replicates.
        seed: RNG seed.
        tied_tol: tie tolerance of the concordances.

    Returns:
        ``{"c_index_harrell": [...], "c_index_uno": [...], "ibs": [...]}`` (``ibs`` only with a
        grid), one value per replicate.
    """
    lv = table.last_visit
    tlv, tev = train
    out: dict[str, list[float]] = {"c_index_harrell": [], "c_index_uno": [], "ibs": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for idx in bootstrap_indices(table.n, n_boot, seed):
            r, t, e = risk[idx], lv[idx], ev[idx]
            out["c_index_harrell"].append(_or_nan(harrell_c, r, t, e, tied_tol))
            out["c_index_uno"].append(_or_nan(uno_c, r, t, e, tlv, tev, tau, tied_tol))
            if grid is not None:
                sub = table.take(idx)
                out["ibs"].append(_or_nan(integrated_brier, sub, None, e, tlv, tev, grid))
    if grid is None:
        del out["ibs"]
    return out


def _or_nan(fn: Callable[..., float], *args: Any) -> float:
    try:
        return float(fn(*args))
    except ValueError:
        return math.nan
