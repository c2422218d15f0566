"""Survival metrics on per-visit discrete-time hazards (DESIGN.md §2, §4).

Conventions used by every function in this module:

- Subject i has hazards ``h_i[0..T_i]`` over its real visits (``T_i`` = ``last_visit[i]``, the index
  of the last input visit) and an event flag ``δ_i``: the event happened in the interval after
  visit ``T_i``.
- Survival ``S_i(t) = Π_{s≤t} (1 − h_i[s])`` is computed in log space (a running sum of
  ``log1p(−h)``). Beyond the last visit the last hazard is held constant:
  ``S_i(t) = S_i(T_i) · (1 − h_i[T_i])^(t − T_i)`` for ``t > T_i``.
- Time for scikit-survival (and any function that takes one time per subject): an event is passed
  as time ``T + 0.5`` and a censoring as time ``T`` (see :func:`to_sksurv_time`). A subject censored
  at the same last visit as an event is then not comparable to it; one censored later is.
- On that time scale the predicted probability of being event-free at a whole time ``k`` is
  ``S(k − 1)`` with ``S(−1) = 1`` (see :func:`event_free_at`). Brier scores, time-dependent AUC and
  calibration are evaluated at whole ``k`` with that value.

Hazards arrive either as a padded 2-D array ``[N, V]`` plus ``last_visit`` (entries after
``T_i`` are padding and are ignored) or as a ragged sequence of 1-D arrays of length ``T_i + 1``;
:func:`as_hazard_table` turns both into one flat container. Metrics are always computed over a
whole split, never averaged over batches. This module is pure numpy/scipy/scikit-survival.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Hazards as accepted by the public functions: a padded ``[N, V]`` array, a ragged sequence of
#: 1-D arrays (length ``T_i + 1`` each), or an already normalised :class:`HazardTable`.
HazardsLike = Union["HazardTable", npt.NDArray[Any], Sequence[npt.ArrayLike]]

RISK_SCORE_KINDS = ("mean_hazard", "horizon", "first_n")


# --------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HazardTable:
    """Per-subject hazards of the real visits in flat (CSR) form, with their log-survival.

    Build it with :func:`as_hazard_table`; every public function accepts it in place of raw
    hazards, which saves re-validating a large split several times.

    Attributes:
        values: float64 ``[sum_i (T_i + 1)]``; the hazards of subject i are
            ``values[offsets[i]:offsets[i + 1]]``.
        offsets: int64 ``[N + 1]`` segment boundaries into ``values``.
        last_visit: int64 ``[N]``, ``T_i``.
        log_survival_flat: float64, same layout as ``values``: ``log S_i(t)`` for ``t ≤ T_i``,
            accumulated left to right (a sequential sum, so equal prefixes give bitwise equal values).
    """

    values: FloatArray
    offsets: IntArray
    last_visit: IntArray
    log_survival_flat: FloatArray

    @property
    def n(self) -> int:
        """Number of subjects N."""
        return int(self.last_visit.shape[0])

    def log_survival(self, times: npt.ArrayLike) -> FloatArray:
        """``log S_i(t)`` on whole times, with the constant-hazard extension beyond ``T_i``.

        Args:
            times: int ``[K]`` whole visit indices ``≥ −1`` (``log S(−1) = 0``).

        Returns:
            float64 ``[N, K]``.
        """
        t = np.asarray(times, dtype=np.int64).reshape(-1)
        if t.size and t.min() < -1:
            raise ValueError(f"times: must be >= -1, got min {t.min()}")
        T = self.last_visit[:, None]  # [N, 1]
        start = self.offsets[:-1, None]  # [N, 1]
        pos = np.minimum(np.maximum(t[None, :], 0), T)  # [N, K] index within the subject
        out = self.log_survival_flat[start + pos]  # [N, K]
        beyond = np.maximum(t[None, :] - T, 0)  # [N, K] steps past the last visit
        if np.any(beyond):
            with np.errstate(divide="ignore", invalid="ignore"):
                log_q_last = np.log1p(-self.values[self.offsets[1:] - 1])  # [N]
                extra = beyond * log_q_last[:, None]
            extra[beyond == 0] = 0.0  # 0 · (−inf) when h = 1 must stay 0
            out = out + extra
        out[:, t == -1] = 0.0
        return out

    def padded(self, horizon: int | None = None) -> FloatArray:
        """Hazards as a padded ``[N, K]`` float64 array with the last hazard held beyond ``T_i``.

        Args:
            horizon: number of columns K (visit indices ``0..K−1``); default ``max(T) + 1``.
        """
        k = _check_horizon_count(horizon, self.last_visit)
        pos = np.minimum(np.arange(k)[None, :], self.last_visit[:, None])  # [N, K]
        return self.values[self.offsets[:-1, None] + pos]


def as_hazard_table(hazards: HazardsLike, last_visit: npt.ArrayLike | None = None) -> HazardTable:
    """Validate hazards and put them in the flat :class:`HazardTable` form.

    Args:
        hazards: a :class:`HazardTable` (returned as is); a padded float array ``[N, V]`` (then
            ``last_visit`` is required and entries after ``T_i`` are ignored, NaN allowed there);
            or a sequence of N 1-D arrays, subject i's of length ``T_i + 1`` exactly.
        last_visit: int ``[N]``, ``T_i ≥ 0``. Optional for ragged input (inferred from lengths).

    Returns:
        The normalised table.

    Raises:
        ValueError: empty input, wrong shapes or dtypes, hazards outside ``[0, 1]`` or not finite
            on a real visit, ``last_visit`` out of range or inconsistent with ragged lengths.
    """
    if isinstance(hazards, HazardTable):
        if last_visit is not None:
            lv = _as_last_visit(last_visit, "last_visit", hazards.n)
            if not np.array_equal(lv, hazards.last_visit):
                raise ValueError("last_visit: differs from the HazardTable's last_visit")
        return hazards

    if isinstance(hazards, np.ndarray) and hazards.dtype != object:
        if hazards.ndim != 2:
            raise ValueError(
                f"hazards: a padded array must be 2-D [N, V], got shape {hazards.shape}; "
                "pass ragged hazards as a list of 1-D arrays"
            )
        _check_numeric(hazards, "hazards")
        n, v = hazards.shape
        if n == 0 or v == 0:
            raise ValueError(f"hazards: empty array of shape {hazards.shape}")
        if last_visit is None:
            raise ValueError("last_visit: required with padded [N, V] hazards")
        lv = _as_last_visit(last_visit, "last_visit", n)
        if lv.max() >= v:
            raise ValueError(
                f"last_visit: max {lv.max()} does not fit the {v} visit columns of hazards"
            )
        real = np.arange(v)[None, :] <= lv[:, None]  # [N, V] real-visit mask
        values = np.asarray(hazards, dtype=np.float64)[real]  # row-major: subject after subject
        lengths = lv + 1
    else:
        rows = list(hazards)
        if len(rows) == 0:
            raise ValueError("hazards: empty sequence")
        arrays = [np.asarray(r) for r in rows]
        for i, a in enumerate(arrays):
            if a.ndim != 1:
                raise ValueError(f"hazards: subject {i} has shape {a.shape}, expected 1-D")
            if a.shape[0] == 0:
                raise ValueError(f"hazards: subject {i} has no visit")
            if a.dtype.kind not in "fiu":
                raise ValueError(f"hazards: subject {i} has non-numeric dtype {a.dtype}")
        lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        if last_visit is None:
            lv = lengths - 1
        else:
            lv = _as_last_visit(last_visit, "last_visit", len(arrays))
            bad = np.flatnonzero(lv + 1 != lengths)
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"last_visit: subject {i} has last_visit {lv[i]} but {lengths[i]} hazards "
                    "(ragged hazards need exactly last_visit + 1 values)"
                )
        values = np.concatenate(arrays).astype(np.float64, copy=False)

    if not np.all(np.isfinite(values)):
        raise ValueError("hazards: NaN or infinite value on a real visit")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(
            f"hazards: values must lie in [0, 1], got range [{values.min()}, {values.max()}]"
        )
    return _table(values, lv)


def hazard_table_from_csr(values: npt.ArrayLike, offsets: npt.ArrayLike) -> HazardTable:
    """Build a :class:`HazardTable` from flat hazards and ``[N + 1]`` segment offsets.

    The zero-copy path for hazards that already live in CSR form (a Parquet list column, the
    predictions of a batch job): no per-subject Python objects.

    Raises:
        ValueError: offsets not starting at 0, not increasing, or not matching ``values``.
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if off.size < 2 or off[0] != 0 or off[-1] != vals.size:
        raise ValueError("offsets: must start at 0 and end at len(values), with N + 1 entries")
    lengths = np.diff(off)
    if lengths.min() < 1:
        raise ValueError("offsets: every subject needs at least one visit")
    if not np.all(np.isfinite(vals)) or (vals.size and (vals.min() < 0.0 or vals.max() > 1.0)):
        raise ValueError("values: hazards must be finite and lie in [0, 1]")
    return _table(vals, lengths - 1)


def _table(values: FloatArray, lv: IntArray) -> HazardTable:
    lengths = lv + 1
    offsets = np.zeros(lv.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with np.errstate(divide="ignore"):
        log_q = np.log1p(-values)  # log(1 − h); −inf where h = 1
    log_s = _segment_cumsum(log_q, offsets)
    return HazardTable(values=values, offsets=offsets, last_visit=lv, log_survival_flat=log_s)


def pad_hazards(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None = None, horizon: int | None = None
) -> FloatArray:
    """Hazards as a padded float64 ``[N, K]`` array, last hazard held constant beyond ``T_i``.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        horizon: number of columns K (visit indices ``0..K−1``); default ``max(T) + 1``.

    Returns:
        float64 ``[N, K]`` with ``out[i, t] = h_i[min(t, T_i)]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; ``horizon`` not a positive int.
    """
    return as_hazard_table(hazards, last_visit).padded(horizon)


def _segment_cumsum(x: FloatArray, offsets: IntArray) -> FloatArray:
    """Cumulative sum within each segment, accumulated strictly left to right.

    Loops over the position within a segment (max length iterations), each step vectorised over
    the segments still that long, so the cost is O(len(x)) and the extra memory O(N).
    """
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest segments first
    neg_sorted = -lengths[order]  # ascending
    starts = offsets[:-1][order]
    out = np.empty_like(x)
    out[starts] = x[starts]
    for t in range(1, int(lengths.max(initial=0))):
        m = int(np.searchsorted(neg_sorted, -t, side="left"))  # segments with length > t
        pos = starts[:m] + t
        out[pos] = out[pos - 1] + x[pos]
    return out


def _check_numeric(a: npt.NDArray[Any], name: str) -> None:
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric dtype, got {a.dtype}")


def _as_last_visit(last_visit: npt.ArrayLike, name: str, n: int | None = None) -> IntArray:
    a = np.asarray(last_visit)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: empty")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer dtype (visit index T), got {a.dtype}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {n} subjects")
    if a.min() < 0:
        raise ValueError(f"{name}: visit indices must be >= 0, got min {a.min()}")
    return a.astype(np.int64, copy=False)


def _as_event(event: npt.ArrayLike, name: str, n: int) -> BoolArray:
    a = np.asarray(event)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {n} subjects")
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf" or not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name}: expected bool (or 0/1) values, got dtype {a.dtype}")
    return a.astype(np.bool_)


def _as_risk(risk: npt.ArrayLike, name: str, n: int) -> FloatArray:
    a = np.asarray(risk)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {n} subjects")
    _check_numeric(a, name)
    out = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: NaN or infinite value")
    return out


def _check_horizon_count(horizon: int | None, last_visit: IntArray) -> int:
    if horizon is None:
        return int(last_visit.max()) + 1
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(
            f"horizon: expected a positive int (number of grid points), got {horizon!r}"
        )
    return int(horizon)


def _as_whole_times(times: npt.ArrayLike, name: str) -> IntArray:
    a = np.asarray(times)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of whole times, got {a.shape}")
    _check_numeric(a, name)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{name}: must be whole visit indices k, got {a}")
    return np.unique(a.astype(np.int64))


def _check_pair(
    last_visit: npt.ArrayLike, event: npt.ArrayLike, prefix: str = ""
) -> tuple[IntArray, BoolArray]:
    lv = _as_last_visit(last_visit, f"{prefix}last_visit")
    ev = _as_event(event, f"{prefix}event", lv.shape[0])
    return lv, ev


# --------------------------------------------------------------------------------------------
# Time convention and survival curves
# --------------------------------------------------------------------------------------------


def to_sksurv_time(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> FloatArray:
    """Observed times for scikit-survival: ``T + 0.5`` for events, ``T`` for censorings.

    Args:
        last_visit: int ``[N]`` last input visit index T.
        event: bool ``[N]``.

    Returns:
        float64 ``[N]``.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    return lv + 0.5 * ev


def structured_y(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> npt.NDArray[Any]:
    """The scikit-survival structured ``(event, time)`` array on the :func:`to_sksurv_time` scale.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    return Surv.from_arrays(event=ev, time=lv + 0.5 * ev)


def _structured_y_capped(lv: IntArray, ev: BoolArray, cap: float) -> npt.NDArray[Any]:
    # Observed times above `cap` are lowered to `cap`. When `cap` exceeds every evaluated horizon,
    # every case/control label and every censoring weight that scikit-survival's Brier score and
    # cumulative/dynamic AUC use at those horizons is unchanged, but the censoring distribution
    # (from the train split) is no longer asked about times it cannot estimate.
    return Surv.from_arrays(event=ev, time=np.minimum(lv + 0.5 * ev, cap))


def survival_curves(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None = None, horizon: int | None = None
) -> FloatArray:
    """Predicted survival ``S_i(t)`` on the grid ``t = 0..K−1``.

    Beyond a subject's last visit the last hazard is held constant.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        horizon: number of grid points K; default ``max(T) + 1``.

    Returns:
        float64 ``[N, K]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; ``horizon`` not a positive int.

    Example:
        ``h = [.1, .15, .2]`` and ``horizon=4`` give ``[.9, .765, .612, .612 · .8]``.
    """
    table = as_hazard_table(hazards, last_visit)
    k = _check_horizon_count(horizon, table.last_visit)
    return np.exp(table.log_survival(np.arange(k)))


def event_free_at(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None, times: npt.ArrayLike
) -> FloatArray:
    """Predicted probability of being event-free at whole times k (``S(k − 1)``, ``S(−1) = 1``).

    This is the prediction that matches the :func:`to_sksurv_time` scale: an event after visit T
    happens at T + 0.5, so it has happened by time k iff ``T ≤ k − 1``.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        times: whole times ``k ≥ 0``, ``[K]``; returned in sorted unique order.

    Returns:
        float64 ``[N, K]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; negative or non-whole ``times``.
    """
    table = as_hazard_table(hazards, last_visit)
    ks = _as_whole_times(times, "times")
    if ks.min() < 0:
        raise ValueError(f"times: must be >= 0, got {ks.min()}")
    return np.exp(table.log_survival(ks - 1))


# --------------------------------------------------------------------------------------------
# Concordance
# --------------------------------------------------------------------------------------------


class _TdConcordance:
    """Antolini's time-dependent concordance, prepared once, scored with optional subject weights.

    For each distinct event visit t: the comparators ``{j : T_j > t}`` sorted by ``log S_j(t)``,
    and for each event at t the positions where ``log S_i(t) ± tol`` fall in that order. Counting
    concordant and tied pairs is then a difference of positions (or of cumulative weights, for the
    bootstrap). Memory: ``Σ_t |{j : T_j > t}| ≤`` number of real visits.
    """

    def __init__(self, table: HazardTable, event: BoolArray, tied_tol: float) -> None:
        T = table.last_visit
        start = table.offsets[:-1]
        ls = table.log_survival_flat
        order_desc = np.argsort(-T, kind="stable")
        neg_T_sorted = -T[order_desc]  # ascending
        ev_idx = np.flatnonzero(event)
        ev_idx = ev_idx[np.argsort(T[ev_idx], kind="stable")]
        ev_times, first = np.unique(T[ev_idx], return_index=True)
        bounds = np.append(first, ev_idx.shape[0])
        self.groups: list[tuple[IntArray, IntArray, IntArray, IntArray]] = []
        for g, t in enumerate(ev_times):
            m = int(np.searchsorted(neg_T_sorted, -t, side="left"))  # subjects with T > t
            if m == 0:
                continue
            comp = order_desc[:m]
            v = ls[start[comp] + t]  # log S_j(t), j comparable to the events at t
            o = np.argsort(v, kind="stable")
            v_sorted = v[o]
            ev_t = ev_idx[bounds[g] : bounds[g + 1]]
            a = ls[start[ev_t] + t]  # log S_i(T_i)
            hi = np.searchsorted(v_sorted, a + tied_tol, side="right")  # beyond: concordant
            lo = np.searchsorted(v_sorted, a - tied_tol, side="left")  # [lo, hi): tied
            self.groups.append((ev_t, comp[o], lo.astype(np.int64), hi.astype(np.int64)))

    def counts(self) -> tuple[int, int, int]:
        """(concordant, tied, comparable) pair counts."""
        conc = tied = comparable = 0
        for ev_t, comp_sorted, lo, hi in self.groups:
            m = comp_sorted.shape[0]
            conc += int(np.sum(m - hi))
            tied += int(np.sum(hi - lo))
            comparable += m * ev_t.shape[0]
        return conc, tied, comparable

    def score(self, weights: FloatArray | None = None) -> float:
        """C-index; with ``weights`` [N] each pair (i, j) counts ``w_i · w_j`` times."""
        if weights is None:
            conc, tied, comparable = self.counts()
            return (conc + 0.5 * tied) / comparable if comparable else math.nan
        num = den = 0.0
        for ev_t, comp_sorted, lo, hi in self.groups:
            cw = np.concatenate(([0.0], np.cumsum(weights[comp_sorted])))
            w_ev = weights[ev_t]
            num += float(w_ev @ ((cw[-1] - cw[hi]) + 0.5 * (cw[hi] - cw[lo])))
            den += float(w_ev.sum() * cw[-1])
        return num / den if den > 0 else math.nan


def concordance_td(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    tied_tol: float = 1e-8,
) -> float:
    """Antolini's time-dependent concordance on the predicted survival curves.

    Pair (i, j) is comparable when ``δ_i = 1`` and ``T_i < T_j``. On the :func:`to_sksurv_time`
    scale this is exactly "i has an event and ``time_i < time_j``": a j censored at ``T_j = T_i``
    is not comparable, one censored at ``T_j ≥ T_i + 1`` is; events at the same visit are not.
    The pair is concordant when ``S_i(T_i) < S_j(T_i)``; both values lie on real visits, so the
    constant-hazard extension is never used here. Survival values whose logs differ by at most
    ``tied_tol`` (a relative tolerance on S) count as ties, worth 0.5.

    Cost: one sort of the comparators per distinct event visit; memory at most the number of real
    visits. 50,000 subjects with ~20 visits take well under a second.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        event: bool ``[N]``.
        tied_tol: tolerance on ``log S`` for ties, ``≥ 0``.

    Returns:
        The C-index in ``[0, 1]``, or NaN when there is no comparable pair (no event, or every
        event at the largest last visit); undefined, so not raised, to let a split report it.

    Raises:
        ValueError: see :func:`as_hazard_table`; bad ``event`` or ``tied_tol``.
    """
    table = as_hazard_table(hazards, last_visit)
    ev = _as_event(event, "event", table.n)
    if not tied_tol >= 0:
        raise ValueError(f"tied_tol: must be >= 0, got {tied_tol}")
    return _TdConcordance(table, ev, float(tied_tol)).score()


def harrell_c(
    risk: npt.ArrayLike,
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    tied_tol: float = 1e-8,
) -> float:
    """Harrell's C of a scalar risk score (higher = earlier event), via scikit-survival.

    Times follow :func:`to_sksurv_time`, so the comparable pairs are those of
    :func:`concordance_td`; risk ties count 0.5.

    Args:
        risk: float ``[N]``.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        tied_tol: risk-tie tolerance passed to scikit-survival.

    Returns:
        The C-index, or NaN when there is no comparable pair.

    Raises:
        ValueError: bad shapes, dtypes, non-finite risk, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    r = _as_risk(risk, "risk", lv.shape[0])
    if not ev.any() or lv.shape[0] < 2:
        return math.nan
    time = lv + 0.5 * ev
    if lv.shape[0] > HARRELL_SKSURV_MAX_N and np.unique(time[ev]).size <= HARRELL_MAX_GROUPS:
        return _harrell_grouped(r, time, ev, tied_tol)
    try:
        return float(concordance_index_censored(ev, time, r, tied_tol=tied_tol)[0])
    except NoComparablePairException:
        return math.nan


# scikit-survival's Harrell C loops over events in Python with an O(N) step each (53 s at
# 150,000 subjects here). Above this size, the same statistic is computed per distinct event
# time, which is cheap because times are visit indices; a test pins equality with sksurv.
HARRELL_SKSURV_MAX_N = 20_000
HARRELL_MAX_GROUPS = 2_000


def _harrell_grouped(r: FloatArray, time: FloatArray, ev: BoolArray, tied_tol: float) -> float:
    """Harrell's C exactly as ``concordance_index_censored`` defines it, for few distinct times.

    With events at ``T + 0.5`` and censorings at ``T``, an event never ties in time with a
    censoring, so the comparable pairs of event i are exactly the subjects with a later time.
    """
    order = np.argsort(time, kind="stable")
    t_sorted = time[order]
    concordant = 0.0
    tied = 0.0
    comparable = 0
    for tau in np.unique(time[ev]):
        later = order[np.searchsorted(t_sorted, tau, side="right") :]
        if later.size == 0:
            continue
        r_later = np.sort(r[later])
        r_i = r[ev & (time == tau)]
        lo = np.searchsorted(r_later, r_i - tied_tol, side="left")  # r_j < r_i - tol
        hi = np.searchsorted(r_later, r_i + tied_tol, side="right")  # r_j <= r_i + tol
        concordant += float(lo.sum())
        tied += float((hi - lo).sum())
        comparable += int(r_i.size) * int(later.size)
    if comparable == 0:
        return math.nan
    return (concordant + 0.5 * tied) / comparable


def uno_default_tau(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> float | None:
    """The truncation time :func:`uno_c` uses when none is given.

    The censoring distribution is estimated on the train split and is unknown beyond its largest
    time, so test events later than that are left out: ``None`` when no test event is later,
    else the largest train time (plus 0.25 when it is an event, so that test events tied with it
    stay in).

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    tlv, tev = _check_pair(train_last_visit, train_event, "train_")
    t_train = tlv + 0.5 * tev
    max_train = float(t_train.max())
    t_test_events = (lv + 0.5 * ev)[ev]
    if t_test_events.size == 0 or t_test_events.max() <= max_train:
        return None
    return max_train + 0.25 if max_train % 1 else max_train


def uno_c(
    risk: npt.ArrayLike,
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    tau: float | None = None,
    tied_tol: float = 1e-8,
) -> float:
    """Uno's IPCW C-index of a scalar risk score, via scikit-survival.

    The censoring distribution is the Kaplan–Meier estimate on the train split. Times follow
    :func:`to_sksurv_time`.

    Args:
        risk: float ``[N]``, higher = earlier event.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        tau: only pairs whose first time is ``< tau`` count; default :func:`uno_default_tau`.
        tied_tol: risk-tie tolerance passed to scikit-survival.

    Returns:
        The C-index, or NaN when there is no comparable pair (before ``tau``).

    Raises:
        ValueError: bad shapes, dtypes, non-finite risk, empty input; a ``tau`` beyond the train
            follow-up (from scikit-survival).
    """
    lv, ev = _check_pair(last_visit, event)
    tlv, tev = _check_pair(train_last_visit, train_event, "train_")
    r = _as_risk(risk, "risk", lv.shape[0])
    if lv.shape[0] < 2:
        return math.nan
    if tau is None:
        tau = uno_default_tau(lv, ev, tlv, tev)
    t = lv + 0.5 * ev
    counted = ev if tau is None else ev & (t < tau)
    if not counted.any():
        return math.nan
    y_train = Surv.from_arrays(event=tev, time=tlv + 0.5 * tev)
    y_test = Surv.from_arrays(event=ev, time=t)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = concordance_index_ipcw(y_train, y_test, r, tau=tau, tied_tol=tied_tol)[0]
    except NoComparablePairException:
        return math.nan
    return float(c)


def length_only_baseline(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> dict[str, float]:
    """Leakage diagnostic (seed §11.13 (iii)): how well sequence length alone predicts the event.

    On the visit-index time axis the length *is* the observed time, so any concordance of ``−T``
    is 1 by construction and says nothing. The informative question is whether the length
    separates subjects whose history ends in an event from censored ones: the AUC (Mann–Whitney,
    ties 0.5) of ``T`` for ``δ``, which equals the AUC of a one-feature logistic regression on
    length. A value well above 0.5 (the seed flags 0.75) means that a model able to see the
    length, or the end of the sequence, can score without learning anything clinical.

    Args:
        last_visit: int ``[N]``.
        event: bool ``[N]``.

    Returns:
        ``{"auc_length_event": max(a, 1 − a), "auc_length_event_signed": a}``, where ``a > 0.5``
        means longer histories end in an event more often; NaN without both classes.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    n_ev = int(ev.sum())
    n_cens = lv.shape[0] - n_ev
    if n_ev == 0 or n_cens == 0:
        return {"auc_length_event": math.nan, "auc_length_event_signed": math.nan}
    ranks = rankdata(lv)  # average ranks: ties count 0.5
    a = float((ranks[ev].sum() - n_ev * (n_ev + 1) / 2) / (n_ev * n_cens))
    return {"auc_length_event": max(a, 1.0 - a), "auc_length_event_signed": a}


# --------------------------------------------------------------------------------------------
# Brier score, time-dependent AUC
# --------------------------------------------------------------------------------------------


class HorizonScores(NamedTuple):
    """A metric at whole horizons k.

    Attributes:
        horizons: int ``[K]`` sorted.
        scores: float ``[K]``.
    """

    horizons: IntArray
    scores: FloatArray

    def as_dict(self) -> dict[str, float]:
        """``{"<k>": score}``, the ``metrics.json`` form."""
        return {str(int(k)): float(s) for k, s in zip(self.horizons, self.scores, strict=True)}


def valid_horizon_range(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> tuple[int, int]:
    """The whole horizons ``lo ≤ k ≤ hi`` at which IPCW Brier scores and td-AUC are defined.

    ``k ≥ 1`` (at ``k = 0`` everyone is event-free by definition), ``k ≥`` the smallest test
    time (scikit-survival), ``k <`` the largest test time (someone must still be followed) and
    ``k <`` the largest train time (the censoring distribution is unknown beyond it).

    Returns:
        ``(lo, hi)``; ``hi < lo`` when no horizon is valid.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    tlv, tev = _check_pair(train_last_visit, train_event, "train_")
    t = lv + 0.5 * ev
    t_train = tlv + 0.5 * tev
    lo = max(1, math.ceil(float(t.min())))
    hi = min(math.ceil(float(t.max())), math.ceil(float(t_train.max()))) - 1
    return lo, hi


def default_horizons(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    quantiles: Sequence[float] = (0.25, 0.5, 0.75),
) -> IntArray:
    """Default whole horizons for Brier scores and td-AUC.

    The quantiles (nearest rank) of ``T + 1`` over the split's events (the first whole time by
    which each event has happened), clipped to :func:`valid_horizon_range`, de-duplicated.

    Returns:
        int ``[K]``, possibly empty (no event, or no valid horizon).

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    lo, hi = valid_horizon_range(lv, ev, train_last_visit, train_event)
    if hi < lo or not ev.any():
        return np.zeros(0, dtype=np.int64)
    q = np.quantile(lv[ev] + 1, np.asarray(quantiles, dtype=float), method="nearest")
    return np.unique(np.clip(q.astype(np.int64), lo, hi))


def default_ibs_grid(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> IntArray:
    """Default grid for the integrated Brier score: every whole k in the valid range up to the
    90th percentile (nearest rank) of ``T + 1`` over events, where IPCW weights are still stable;
    the whole valid range when that leaves fewer than two points.

    Returns:
        int ``[K]``, possibly with fewer than two points (then the IBS is undefined).

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = _check_pair(last_visit, event)
    lo, hi = valid_horizon_range(lv, ev, train_last_visit, train_event)
    if hi < lo:
        return np.zeros(0, dtype=np.int64)
    top = hi
    if ev.any():
        q90 = int(np.quantile(lv[ev] + 1, 0.9, method="nearest"))
        top = min(hi, max(q90, lo + 1))
    return np.arange(lo, top + 1, dtype=np.int64)


def _ipcw_inputs(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None,
    grid: Callable[..., IntArray],
) -> tuple[HazardTable, BoolArray, IntArray, npt.NDArray[Any], npt.NDArray[Any], FloatArray]:
    """Shared validation for the IPCW metrics: (table, event, horizons, y_train, y_test, S(k−1))."""
    table = as_hazard_table(hazards, last_visit)
    ev = _as_event(event, "event", table.n)
    tlv, tev = _check_pair(train_last_visit, train_event, "train_")
    lo, hi = valid_horizon_range(table.last_visit, ev, tlv, tev)
    if horizons is None:
        ks = grid(table.last_visit, ev, tlv, tev)
        if ks.size == 0:
            raise ValueError(f"horizons: no valid default horizon (valid range [{lo}, {hi}])")
    else:
        ks = _as_whole_times(horizons, "horizons")
    if ks.min() < lo or ks.max() > hi:
        raise ValueError(
            f"horizons: {ks.tolist()} outside the valid range [{lo}, {hi}] "
            "(k >= 1, within the test follow-up, before the last train time)"
        )
    y_train = Surv.from_arrays(event=tev, time=tlv + 0.5 * tev)
    y_test = _structured_y_capped(table.last_visit, ev, float(ks.max()) + 0.25)
    surv = np.exp(table.log_survival(ks - 1))  # [N, K] S(k − 1)
    return table, ev, ks, y_train, y_test, surv


def brier_scores(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> HorizonScores:
    """IPCW Brier score at whole horizons k (scikit-survival), predicting ``S(k − 1)``.

    Censoring weights come from the Kaplan–Meier censoring distribution of the train split.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: whole k within :func:`valid_horizon_range`; default :func:`default_horizons`.

    Returns:
        The scores at the sorted unique horizons.

    Raises:
        ValueError: bad inputs; horizons outside the valid range, or no valid default horizon.
    """
    *_, ks, y_train, y_test, surv = _ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_horizons
    )
    _, scores = brier_score(y_train, y_test, surv, ks.astype(np.float64))
    return HorizonScores(ks, np.asarray(scores, dtype=np.float64))


def integrated_brier(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> float:
    """Integrated IPCW Brier score over whole horizons (scikit-survival, trapezoid rule).

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: at least two whole k within :func:`valid_horizon_range`; default
            :func:`default_ibs_grid`.

    Returns:
        The IBS.

    Raises:
        ValueError: bad inputs; fewer than two valid horizons.
    """
    *_, ks, y_train, y_test, surv = _ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_ibs_grid
    )
    if ks.shape[0] < 2:
        raise ValueError(f"horizons: the IBS needs at least two horizons, got {ks.tolist()}")
    return float(integrated_brier_score(y_train, y_test, surv, ks.astype(np.float64)))


def td_auc(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> HorizonScores:
    """Cumulative/dynamic time-dependent AUC (scikit-survival) with risk ``1 − S(k − 1)`` at k.

    Cases at k: events with ``T + 0.5 ≤ k`` (IPCW-weighted, train censoring distribution);
    controls: subjects still followed after k.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: whole k within :func:`valid_horizon_range`; default :func:`default_horizons`.

    Returns:
        AUC per horizon; NaN at a horizon with no case yet.

    Raises:
        ValueError: bad inputs; horizons outside the valid range, or no valid default horizon.
    """
    table, ev, ks, y_train, y_test, surv = _ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_horizons
    )
    scores = np.full(ks.shape[0], math.nan)
    has_case = ks >= (int(table.last_visit[ev].min()) + 1 if ev.any() else np.iinfo(np.int64).max)
    if has_case.any():
        auc, _ = cumulative_dynamic_auc(
            y_train, y_test, 1.0 - surv[:, has_case], ks[has_case].astype(np.float64)
        )
        scores[has_case] = auc
    return HorizonScores(ks, scores)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration of the predicted event probability by whole time k, per risk bin.

    Attributes:
        horizon: the whole time k.
        bin_edges: float ``[B + 1]`` predicted-risk edges of the non-empty bins.
        predicted: float ``[B]`` mean predicted risk ``1 − S(k − 1)`` per bin.
        observed: float ``[B]`` Kaplan–Meier probability of an event by k per bin.
        n: int ``[B]`` subjects per bin.
        n_at_risk: int ``[B]`` subjects per bin still followed after k (few: unstable estimate).
        ece: expected calibration error, ``Σ_b n_b / N · |predicted_b − observed_b|``.
    """

    horizon: int
    bin_edges: FloatArray
    predicted: FloatArray
    observed: FloatArray
    n: IntArray
    n_at_risk: IntArray
    ece: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists and Python scalars)."""
        return {
            "horizon": int(self.horizon),
            "ece": float(self.ece),
            "bin_edges": self.bin_edges.tolist(),
            "predicted": self.predicted.tolist(),
            "observed": self.observed.tolist(),
            "n": self.n.tolist(),
            "n_at_risk": self.n_at_risk.tolist(),
        }


def _km_event_prob(ev: BoolArray, t: FloatArray, k: int) -> float:
    """1 − Kaplan–Meier survival at k (held at its last value past the last observed time)."""
    if not ev.any():
        return 0.0
    times, surv = kaplan_meier_estimator(ev, t)
    i = int(np.searchsorted(times, k, side="right")) - 1
    return 0.0 if i < 0 else float(1.0 - surv[i])


def calibration_at(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    horizon: int,
    n_bins: int = 10,
    strategy: str = "quantile",
) -> CalibrationResult:
    """Predicted risk ``1 − S(k − 1)`` against the observed Kaplan–Meier event probability by k.

    Subjects are binned on predicted risk; in each bin the observed probability is one minus the
    Kaplan–Meier estimate at k on the :func:`to_sksurv_time` scale, which handles censoring.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        horizon: whole time k ≥ 1.
        n_bins: number of bins (before dropping empty ones).
        strategy: ``"quantile"`` (equal counts; robust for skewed risks) or ``"uniform"`` (equal
            width on [0, 1], as in the seed).

    Returns:
        The per-bin table and its ECE.

    Raises:
        ValueError: bad inputs, ``horizon``, ``n_bins`` or ``strategy``.
    """
    table = as_hazard_table(hazards, last_visit)
    ev = _as_event(event, "event", table.n)
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon: expected a whole time k >= 1, got {horizon!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    if strategy not in ("quantile", "uniform"):
        raise ValueError(f"strategy: expected 'quantile' or 'uniform', got {strategy!r}")
    k = int(horizon)
    risk = 1.0 - np.exp(table.log_survival(np.array([k - 1])))[:, 0]  # [N]
    if strategy == "quantile":
        edges = np.unique(np.quantile(risk, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.shape[0] == 1:  # all predictions equal: one bin
            edges = np.array([edges[0], edges[0]])
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_id = np.clip(np.searchsorted(edges[1:-1], risk, side="right"), 0, edges.shape[0] - 2)
    t = table.last_visit + 0.5 * ev
    keep, pred, obs, cnt, at_risk = [], [], [], [], []
    for b in range(edges.shape[0] - 1):
        m = bin_id == b
        if not m.any():
            continue
        keep.append(b)
        pred.append(float(risk[m].mean()))
        obs.append(_km_event_prob(ev[m], t[m], k))
        cnt.append(int(m.sum()))
        at_risk.append(int(np.sum(t[m] > k)))
    kept_edges = np.append(edges[keep], edges[keep[-1] + 1])
    predicted = np.asarray(pred)
    observed = np.asarray(obs)
    n = np.asarray(cnt, dtype=np.int64)
    ece = float(np.sum(n / n.sum() * np.abs(predicted - observed)))
    return CalibrationResult(
        horizon=k,
        bin_edges=kept_edges.astype(np.float64),
        predicted=predicted,
        observed=observed,
        n=n,
        n_at_risk=np.asarray(at_risk, dtype=np.int64),
        ece=ece,
    )


# --------------------------------------------------------------------------------------------
# Risk scores, bootstrap
# --------------------------------------------------------------------------------------------


def risk_scores(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None = None,
    kind: str = "mean_hazard",
    k: int = 10,
    n: int = 10,
) -> FloatArray:
    """Scalar risk per subject (higher = earlier event), for Harrell's and Uno's C.

    Kinds (DESIGN §4): ``mean_hazard``: mean hazard over the subject's real visits (the seed's
    default); ``horizon``: ``1 − S(min(k, T))``; ``first_n``: mean of the first ``min(n, T + 1)``
    hazards (the seed's length-bias fix).

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        kind: one of ``mean_hazard``, ``horizon``, ``first_n``.
        k: visit index for ``horizon`` (``≥ 0``).
        n: number of visits for ``first_n`` (``≥ 1``).

    Returns:
        float64 ``[N]``.

    Raises:
        ValueError: bad inputs, unknown ``kind``, bad ``k`` or ``n``.
    """
    if kind not in RISK_SCORE_KINDS:
        raise ValueError(f"kind: expected one of {RISK_SCORE_KINDS}, got {kind!r}")
    table = as_hazard_table(hazards, last_visit)
    T = table.last_visit
    start = table.offsets[:-1]
    if kind == "horizon":
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k: expected an int >= 0, got {k!r}")
        return 1.0 - np.exp(table.log_survival_flat[start + np.minimum(k, T)])
    if kind == "first_n":
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        m = np.minimum(n, T + 1)
    else:
        m = T + 1
    csum = _segment_cumsum(table.values, table.offsets)
    return csum[start + m - 1] / m


def risk_score_name(kind: str, k: int = 10, n: int = 10) -> str:
    """The label a metric reports for the risk score it used, e.g. ``horizon(k=10)``."""
    if kind not in RISK_SCORE_KINDS:
        raise ValueError(f"kind: expected one of {RISK_SCORE_KINDS}, got {kind!r}")
    return {
        "mean_hazard": "mean_hazard",
        "horizon": f"horizon(k={k})",
        "first_n": f"first_n(n={n})",
    }[kind]


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[IntArray]:
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)


def _percentile_interval(values: Sequence[float], alpha: float) -> tuple[float, float]:
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
        metric_fn(*[_take(a, idx) for a in arrays]) for idx in _bootstrap_indices(n, n_boot, seed)
    ]
    return _percentile_interval(values, alpha)


# --------------------------------------------------------------------------------------------
# One split
# --------------------------------------------------------------------------------------------


def evaluate_split(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    risk_score: str = "mean_hazard",
    horizons: npt.ArrayLike | None = None,
    n_boot: int = 0,
    *,
    risk_k: int = 10,
    risk_n: int = 10,
    seed: int = 0,
    alpha: float = 0.05,
    calibration_horizon: int | None = None,
    n_bins: int = 10,
    tied_tol: float = 1e-8,
) -> dict[str, Any]:
    """All metrics of one split, the ``metrics.json`` entry of DESIGN §5.

    Computed over the whole split. Degenerate splits (no event, a single subject, no valid
    horizon) do not raise: undefined metrics are NaN and ``"warnings"`` says why.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``, the train split (censoring distribution for IPCW).
        train_event: bool ``[M]``.
        risk_score: kind for Harrell's and Uno's C (see :func:`risk_scores`).
        horizons: whole k for Brier and td-AUC; default :func:`default_horizons`. Invalid
            horizons are dropped with a warning.
        n_boot: bootstrap replicates for the 95% intervals ``c_index_td_ci``,
            ``c_index_harrell_ci``, ``c_index_uno_ci`` (at the split's ``uno_tau``) and ``ibs_ci``
            (on the split's IBS grid); every metric sees the same resampled subjects (0: none).
        risk_k: k for ``risk_score="horizon"``.
        risk_n: n for ``risk_score="first_n"``.
        seed: bootstrap seed (same draws as :func:`bootstrap_ci` with that seed).
        alpha: bootstrap interval level ``1 − alpha``.
        calibration_horizon: whole k; default the median default horizon.
        n_bins: calibration bins.
        tied_tol: tie tolerance of the concordances.

    Returns:
        ``{"c_index_td", "c_index_harrell", "c_index_uno", "ibs", "brier": {"<k>": f},
        "td_auc": {"<k>": f}, "n_subjects", "n_events", "risk_score", "c_index_td_ci",
        "c_index_harrell_ci", "c_index_uno_ci", "ibs_ci" (when n_boot > 0), "calibration", "length_only", "uno_tau", "ibs_horizons",
        "warnings"}``. Floats may be NaN; see :func:`jsonable` before writing strict JSON.

    Raises:
        ValueError: malformed inputs (shapes, dtypes, empty split, unknown ``risk_score``).
    """
    table = as_hazard_table(hazards, last_visit)
    ev = _as_event(event, "event", table.n)
    tlv, tev = _check_pair(train_last_visit, train_event, "train_")
    if n_boot < 0:
        raise ValueError(f"n_boot: must be >= 0, got {n_boot}")
    lv = table.last_visit
    risk = risk_scores(table, None, risk_score, k=risk_k, n=risk_n)
    warn: list[str] = []
    n_events = int(ev.sum())
    out: dict[str, Any] = {
        "n_subjects": table.n,
        "n_events": n_events,
        "risk_score": risk_score_name(risk_score, risk_k, risk_n),
    }
    if n_events == 0:
        warn.append("no event in the split: concordances, Brier scores and td-AUC are undefined")
    if table.n == 1:
        warn.append("a single subject: no pair to compare")

    td = _TdConcordance(table, ev, tied_tol)
    out["c_index_td"] = td.score()
    if n_events > 0 and math.isnan(out["c_index_td"]):
        warn.append("no comparable pair: every event is at the largest last visit")
    out["c_index_harrell"] = harrell_c(risk, lv, ev, tied_tol)
    tau = uno_default_tau(lv, ev, tlv, tev)
    out["uno_tau"] = tau
    if tau is not None:
        warn.append(f"Uno's C truncated at tau={tau}: test events after the last train time")
    out["c_index_uno"] = _guarded(
        lambda: uno_c(risk, lv, ev, tlv, tev, tau, tied_tol), "c_index_uno", warn
    )
    out["length_only"] = length_only_baseline(lv, ev)

    if n_boot > 0:
        draws = (
            np.bincount(i, minlength=table.n) for i in _bootstrap_indices(table.n, n_boot, seed)
        )
        out["c_index_td_ci"] = list(
            _percentile_interval([td.score(w.astype(np.float64)) for w in draws], alpha)
        )

    # Brier, td-AUC, IBS, calibration: only at whole horizons inside the valid range.
    lo, hi = valid_horizon_range(lv, ev, tlv, tev)
    if horizons is None:
        ks = default_horizons(lv, ev, tlv, tev)
    else:
        ks = _as_whole_times(horizons, "horizons")
        dropped = ks[(ks < lo) | (ks > hi)]
        if dropped.size:
            warn.append(
                f"horizons {dropped.tolist()} dropped: outside the valid range [{lo}, {hi}]"
            )
        ks = ks[(ks >= lo) & (ks <= hi)]
    out["brier"], out["td_auc"] = {}, {}
    if ks.size == 0:
        if n_events > 0:
            warn.append(f"no valid horizon (valid range [{lo}, {hi}]): no Brier score or td-AUC")
    else:
        bs = _guarded(lambda: brier_scores(table, None, ev, tlv, tev, ks), "brier", warn)
        if isinstance(bs, HorizonScores):
            out["brier"] = bs.as_dict()
        auc = _guarded(lambda: td_auc(table, None, ev, tlv, tev, ks), "td_auc", warn)
        if isinstance(auc, HorizonScores):
            out["td_auc"] = auc.as_dict()
    grid = default_ibs_grid(lv, ev, tlv, tev)
    out["ibs_horizons"] = [int(grid[0]), int(grid[-1])] if grid.size else []
    if grid.size >= 2 and n_events > 0:
        out["ibs"] = _guarded(
            lambda: integrated_brier(table, None, ev, tlv, tev, grid), "ibs", warn
        )
    else:
        out["ibs"] = math.nan
        if n_events > 0:
            warn.append("integrated Brier score undefined: fewer than two valid horizons")

    k_cal = calibration_horizon
    if k_cal is None and ks.size:
        k_cal = int(ks[ks.shape[0] // 2])
    if k_cal is None:
        out["calibration"] = None
        warn.append("no calibration: no valid horizon")
    else:
        cal = _guarded(
            lambda: calibration_at(table, None, ev, int(k_cal), n_bins=n_bins).as_dict(),
            "calibration",
            warn,
        )
        out["calibration"] = None if isinstance(cal, float) else cal
    if n_boot > 0:
        boot = _bootstrap_more(
            table,
            risk,
            ev,
            tlv,
            tev,
            tau,
            grid,
            n_boot,
            seed,
            tied_tol,
            bool(np.isfinite(out["ibs"])),
        )
        for name, values in boot.items():
            out[f"{name}_ci"] = list(_percentile_interval(values, alpha))
    out["warnings"] = warn
    return out


def subset_table(table: HazardTable, idx: npt.ArrayLike) -> HazardTable:
    """The hazard table of subjects ``idx`` (with repeats), in that order."""
    idx = np.asarray(idx, dtype=np.int64)
    lengths = table.last_visit[idx] + 1
    starts = table.offsets[idx]
    off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    flat = np.repeat(starts - off[:-1], lengths) + np.arange(off[-1], dtype=np.int64)
    return hazard_table_from_csr(table.values[flat], off)


def _bootstrap_more(
    table: HazardTable,
    risk: FloatArray,
    ev: BoolArray,
    tlv: IntArray,
    tev: BoolArray,
    tau: float | None,
    grid: IntArray,
    n_boot: int,
    seed: int,
    tied_tol: float,
    with_ibs: bool,
) -> dict[str, list[float]]:
    """Harrell's C, Uno's C and the IBS on the same bootstrap draws as ``c_index_td_ci``.

    Uno's tau and the IBS grid stay those of the full split, so every replicate estimates the
    same quantity. A replicate where a metric is undefined (e.g. no event drawn) counts as NaN
    and is left out of the interval."""
    lv = table.last_visit
    out: dict[str, list[float]] = {"c_index_harrell": [], "c_index_uno": [], "ibs": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for idx in _bootstrap_indices(table.n, n_boot, seed):
            r, t, e = risk[idx], lv[idx], ev[idx]
            out["c_index_harrell"].append(_or_nan(harrell_c, r, t, e, tied_tol))
            out["c_index_uno"].append(_or_nan(uno_c, r, t, e, tlv, tev, tau, tied_tol))
            if with_ibs:
                sub = subset_table(table, idx)
                out["ibs"].append(_or_nan(integrated_brier, sub, None, e, tlv, tev, grid))
    if not with_ibs:
        del out["ibs"]
    return out


def _or_nan(fn: Callable[..., float], *args: Any) -> float:
    try:
        return float(fn(*args))
    except ValueError:
        return math.nan


def _guarded(fn: Callable[[], Any], name: str, warn: list[str]) -> Any:
    """Run a metric; a ValueError from a degenerate split becomes NaN plus a warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn()
    except ValueError as e:
        warn.append(f"{name} undefined: {e}")
        return math.nan


def jsonable(obj: Any) -> Any:
    """A copy of a metrics dict that strict JSON accepts: NaN/inf → None, numpy → Python types."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
