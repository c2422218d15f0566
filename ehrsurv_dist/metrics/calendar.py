"""Survival metrics on the day scale: tasks on the calendar axis (the calendar-axis contract,
docs/design.md).

A split holds N samples (a subject may have several, one per prediction time). Each sample has
the predicted survival ``S`` at the bins' right edges ``e_1 … e_K`` (edges ``e_0 = 0 < … < e_K =
horizon``, in days after the prediction time), an observed ``time_days`` (to the event or the
censoring, capped at the horizon), an ``event`` flag and its ``subject_id``.

Conventions, shared by every metric here:

- **The survival between edges** is pycox's ``EvalSurv(..., steps="pre")`` step function: at a
  time ``t`` in ``(e_{j-1}, e_j]`` the prediction is ``S(e_j)``; at ``t ≤ e_1`` (including
  ``t = 0``) it is ``S(e_1)``, because pycox clips the index to the first column rather than
  using ``S(0) = 1``; beyond ``e_K`` it is ``S(e_K)``. See :func:`edge_index`.
- **Comparable pairs** (td-C, Harrell, Uno): sample i has an event and either ``t_j > t_i``, or
  ``t_j = t_i`` and j is censored. Samples of one subject are compared with each other like any
  other samples.
- **Risk** for Harrell's and Uno's C, td-AUC and calibration: ``1 − S(horizon) = 1 − S(e_K)``.
- **IPCW** metrics (Uno, Brier, IBS, td-AUC) weight by scikit-survival's Kaplan–Meier censoring
  distribution of the train split.
- **Bootstrap**: a replicate draws subjects with replacement (``numpy.random.default_rng(seed)``,
  the draws of :func:`~ehrsurv_dist.metrics.bootstrap.bootstrap_indices` over the sorted unique
  subjects) and takes all their samples; it is evaluated as per-sample weights (how many times
  the sample's subject was drawn), which is exactly the metric of the resampled split. Metrics
  are always computed over a whole split.

The concordances are counted without a loop over pairs: comparable pairs are those whose time
key is larger (:func:`time_keys`), and a pair counts when the comparator's value rank is below a
threshold, so each metric is a weighted two-dimensional dominance count, split by the bits of the
key into sorted segments (:class:`PairSums`, ``O(N log² N)`` once, then ``O(N log N)`` per
bootstrap replicate with only cumulative sums).

Pure numpy / pyarrow / scikit-survival; matplotlib only inside the plot functions.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score
from sksurv.nonparametric import CensoringDistributionEstimator, kaplan_meier_estimator
from sksurv.util import Surv

from ehrsurv_dist.metrics.bootstrap import bootstrap_indices, percentile_interval
from ehrsurv_dist.metrics.calibration import _bin_edges
from ehrsurv_dist.metrics.inputs import BoolArray, FloatArray, IntArray, as_event

RISK_SCORE = "1-S(horizon)"
CI_METRICS = ("c_index_td", "c_index_harrell", "c_index_uno", "ibs")
IBS_MAX_POINTS = 365  # the IBS grid steps by whole days, at most this many points
_CHUNK_ENTRIES = 2_000_000  # bootstrap replicates are evaluated in chunks of ~this many cells


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Weighted pair counts
# ---------------------------------------------------------------------------------------------


class PairSums:
    """``Σ_i a_i W_i Σ_j W_j [g_j = g_i] [key_j > key_i] [rank_j < thr_i]``, prepared once.

    Queries i and comparators j are entries over the samples (a sample may be a comparator in
    several groups g, with a different value rank in each). Keys are ints ``≥ 0``; a pair with
    ``key_j > key_i`` is counted at exactly one level l, the highest bit where the keys differ:
    there ``key >> (l + 1)`` agree, j has bit l set and i has not. Per level and group, the
    comparators sit in one segment sorted by rank, so a query's count is a difference of
    positions (or of cumulative weights). Cost: ``O(E log E)`` to prepare, for ``E`` comparator
    entries times their set key bits; a weighted evaluation is a cumulative sum over ``E``.

    Args:
        q: int ``[Q]`` sample of each query entry.
        q_group, q_key: int ``[Q]``.
        q_thr: int ``[Q]`` thresholds, one array per count wanted.
        c: int ``[C]`` sample of each comparator entry.
        c_group, c_key, c_rank: int ``[C]`` (ranks ``≥ 0``).
    """

    def __init__(
        self,
        q: IntArray,
        q_group: IntArray,
        q_key: IntArray,
        q_thr: Sequence[IntArray],
        c: IntArray,
        c_group: IntArray,
        c_key: IntArray,
        c_rank: IntArray,
    ) -> None:
        top = int(max(c_key.max(initial=0), q_key.max(initial=0)))
        n_levels = max(1, top.bit_length())
        span = 1 << n_levels
        n_rank = int(max(c_rank.max(initial=0), max(int(t.max(initial=0)) for t in q_thr))) + 1
        c_seg, c_ent, q_seg, q_ent = [], [], [], []
        for lev in range(n_levels):
            cm = ((c_key >> lev) & 1) == 1
            c_seg.append((c_group[cm] * n_levels + lev) * span + (c_key[cm] >> (lev + 1)))
            c_ent.append(np.flatnonzero(cm))
            qm = ((q_key >> lev) & 1) == 0
            q_seg.append((q_group[qm] * n_levels + lev) * span + (q_key[qm] >> (lev + 1)))
            q_ent.append(np.flatnonzero(qm))
        cs, ce = np.concatenate(c_seg), np.concatenate(c_ent)
        qs, qe = np.concatenate(q_seg), np.concatenate(q_ent)
        uniq = np.unique(cs)
        cs_id = np.searchsorted(uniq, cs)
        composite = cs_id * n_rank + c_rank[ce]
        order = np.argsort(composite, kind="stable")
        composite = composite[order]
        self.c_sample: IntArray = c[ce[order]]
        # queries whose segment holds no comparator count nothing: drop them
        if uniq.size:
            found = np.minimum(np.searchsorted(uniq, qs), uniq.shape[0] - 1)
            keep = uniq[found] == qs
        else:
            found, keep = np.zeros_like(qs), np.zeros(qs.shape[0], dtype=bool)
        qe, base = qe[keep], found[keep] * n_rank
        self.q_sample: IntArray = q[qe]
        self.start: IntArray = np.searchsorted(composite, base, side="left")
        self.pos: list[IntArray] = [
            np.searchsorted(composite, base + t[qe], side="left") for t in q_thr
        ]

    @property
    def n_entries(self) -> int:
        return int(self.c_sample.shape[0])

    def counts(self, a: FloatArray) -> list[float]:
        """Unweighted sums (``W = 1``), one per threshold; ``a``: float ``[N]`` query weights."""
        aq = a[self.q_sample]
        return [float(np.dot(aq, (p - self.start).astype(np.float64))) for p in self.pos]

    def weighted(self, w: FloatArray, a: FloatArray) -> list[FloatArray]:
        """Sums for replicate weights ``w`` float ``[B, N]``, one ``[B]`` per threshold."""
        b = w.shape[0]
        cw = np.zeros((b, self.n_entries + 1))
        np.cumsum(w[:, self.c_sample], axis=1, out=cw[:, 1:])
        wq = w[:, self.q_sample] * a[self.q_sample]
        lo = np.take(cw, self.start, axis=1)
        return [np.sum(wq * (np.take(cw, p, axis=1) - lo), axis=1) for p in self.pos]


def _comparable_sums(key: IntArray, a: FloatArray, w: FloatArray | None) -> FloatArray:
    """``Σ_i a_i W_i Σ_j W_j [key_j > key_i]``: ``[1]`` without weights, else ``[B]``."""
    order = np.argsort(key, kind="stable")
    ks = key[order]
    after = np.searchsorted(ks, key, side="right")  # [N] first position with a larger key
    if w is None:
        return np.array([float(np.dot(a, (key.shape[0] - after).astype(np.float64)))])
    cw = np.zeros((w.shape[0], key.shape[0] + 1))
    np.cumsum(w[:, order], axis=1, out=cw[:, 1:])
    later = cw[:, -1:] - np.take(cw, after, axis=1)
    return np.sum(w * a * later, axis=1)


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ---------------------------------------------------------------------------------------------
# Concordances
# ---------------------------------------------------------------------------------------------


class TdConcordanceDays:
    """Antolini's td-C with pycox's convention, prepared once for many weightings.

    ``EvalSurv(DataFrame(survival.T, index=e_1..e_K), time_days, event, censor_surv="km",
    steps="pre").concordance_td("antolini")``: for each comparable pair (see the module doc),
    concordant when ``S_i(c_i) < S_j(c_i)`` strictly (no credit for ties), ``c_i`` the column of
    i's time (:func:`edge_index`, so an event before ``e_1`` is judged on ``S(e_1)``). The
    censoring distribution pycox fits for ``censor_surv`` is not used by this index.

    Per column k the comparators are the samples whose time falls in the same bin (ordered by
    key) and every later sample (all comparable: their times exceed ``e_k``), given one key above
    all others, so they enter a single segment.

    Args:
        survival: float ``[N, K]``.
        edges: float ``[K + 1]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
    """

    def __init__(
        self, survival: npt.NDArray[np.floating], edges: FloatArray, time: FloatArray, ev: BoolArray
    ) -> None:
        col = edge_index(edges, time)
        self.key = time_keys(time, ev)
        self.event = ev.astype(np.float64)
        top = 1 << int(self.key.max()).bit_length()
        q, qg, qk, qt, c, cg, ck, cr = ([] for _ in range(8))
        for k in np.unique(col[ev]):
            within = np.flatnonzero(col == k)
            later = np.flatnonzero(col > k)
            items = np.concatenate([within, later])
            _, rank = _dense_rank(-survival[items, k])  # rank_j < rank_i ⟺ S_j > S_i
            keys = np.concatenate([self.key[within], np.full(later.shape[0], top)])
            c += [items]
            cg += [np.full(items.shape[0], k)]
            ck += [keys]
            cr += [rank]
            is_q = ev[within]
            q += [within[is_q]]
            qg += [np.full(int(is_q.sum()), k)]
            qk += [self.key[within][is_q]]
            qt += [rank[: within.shape[0]][is_q]]
        cat = _cat_int
        self.pairs = PairSums(
            cat(q), cat(qg), cat(qk), [cat(qt)], cat(c), cat(cg), cat(ck), cat(cr)
        )

    def score(self) -> float:
        """The index over the split (NaN without a comparable pair)."""
        num = self.pairs.counts(self.event)[0]
        den = float(_comparable_sums(self.key, self.event, None)[0])
        return num / den if den > 0 else math.nan

    def weighted(self, w: FloatArray) -> FloatArray:
        """The index per replicate, sample weights ``w`` float ``[B, N]``: ``[B]``."""
        num = self.pairs.weighted(w, self.event)[0]
        return _ratio(num, _comparable_sums(self.key, self.event, w))


def _cat_int(parts: list[npt.NDArray[Any]]) -> IntArray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64)


def concordance_td_days(
    survival: npt.ArrayLike, edges: npt.ArrayLike, time_days: npt.ArrayLike, event: npt.ArrayLike
) -> float:
    """Antolini's td-C on the day scale, equal to pycox's (see :class:`TdConcordanceDays`).

    Args:
        survival: float ``[N, K]`` S at ``e_1..e_K``.
        edges: float ``[K + 1]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.

    Returns:
        The index, NaN when no pair is comparable.

    Raises:
        ValueError: bad shapes or values.
    """
    e = check_edges(edges)
    s = check_survival(survival, e.shape[0] - 1)
    t = check_times(time_days, "time_days", s.shape[0])
    ev = as_event(event, "event", s.shape[0])
    if not ev.any():
        return math.nan
    return TdConcordanceDays(s, e, t, ev).score()


class RiskConcordance:
    """Harrell's C (scikit-survival's ``concordance_index_censored``) and Uno's C
    (``concordance_index_ipcw``) of a scalar risk, prepared once for many weightings.

    For a comparable pair, concordant when ``risk_j < risk_i − tol``, tied (worth 0.5) when
    ``|risk_j − risk_i| ≤ tol``, as scikit-survival counts them. Uno's C is the same sum with
    each event i weighted by ``1 / G(t_i)²`` (events with ``t_i < τ`` only).

    Args:
        risk: float ``[N]``, higher = earlier event.
        time: float ``[N]``.
        ev: bool ``[N]``.
        tied_tol: risk-tie tolerance, ``≥ 0``.
    """

    def __init__(self, risk: FloatArray, time: FloatArray, ev: BoolArray, tied_tol: float) -> None:
        self.key = time_keys(time, ev)
        uniq, rank = _dense_rank(risk)
        q = np.flatnonzero(ev)
        lo = np.searchsorted(uniq, risk[q] - tied_tol, side="left")  # rank < lo: concordant
        hi = np.searchsorted(uniq, risk[q] + tied_tol, side="right")  # lo <= rank < hi: tied
        zeros = np.zeros(time.shape[0], dtype=np.int64)
        all_ = np.arange(time.shape[0], dtype=np.int64)
        self.pairs = PairSums(
            q, zeros[q], self.key[q], [lo, hi], all_, zeros, self.key, rank.astype(np.int64)
        )

    def score(self, a: FloatArray) -> float:
        """The index with event weights ``a`` float ``[N]`` (the event flags for Harrell)."""
        lo, hi = self.pairs.counts(a)
        den = float(_comparable_sums(self.key, a, None)[0])
        return 0.5 * (lo + hi) / den if den > 0 else math.nan

    def weighted(self, w: FloatArray, a: FloatArray) -> FloatArray:
        """The index per replicate, sample weights ``w`` float ``[B, N]``: ``[B]``."""
        lo, hi = self.pairs.weighted(w, a)
        return _ratio(0.5 * (lo + hi), _comparable_sums(self.key, a, w))


def harrell_c_days(
    risk: npt.ArrayLike, time_days: npt.ArrayLike, event: npt.ArrayLike, tied_tol: float = 1e-8
) -> float:
    """Harrell's C of a scalar risk, equal to scikit-survival's ``concordance_index_censored``.

    Args:
        risk: float ``[N]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        tied_tol: risk-tie tolerance.

    Returns:
        The index, NaN without a comparable pair.
    """
    t = check_times(time_days, "time_days")
    ev = as_event(event, "event", t.shape[0])
    r = _as_risk(risk, t.shape[0])
    return RiskConcordance(r, t, ev, tied_tol).score(ev.astype(np.float64))


def uno_weights(
    time_days: FloatArray,
    event: BoolArray,
    train_time_days: FloatArray,
    train_event: BoolArray,
    tau: float,
) -> FloatArray:
    """Uno's event weights ``1 / G(t_i)²`` for events with ``t_i < τ``, else 0: float ``[N]``.

    ``G`` is scikit-survival's Kaplan–Meier censoring distribution of the train split.

    Raises:
        ValueError: from scikit-survival, when ``G`` is unknown or zero at a weighted event.
    """
    m = time_days < tau
    cens = CensoringDistributionEstimator().fit(Surv.from_arrays(train_event, train_time_days))
    ipcw = cens.predict_ipcw(Surv.from_arrays(event[m], time_days[m]))
    out = np.zeros(time_days.shape[0])
    out[m] = np.square(ipcw)
    return out


def uno_c_days(
    risk: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    train_time_days: npt.ArrayLike,
    train_event: npt.ArrayLike,
    tau: float,
    tied_tol: float = 1e-8,
) -> float:
    """Uno's C, equal to scikit-survival's ``concordance_index_ipcw(..., tau=tau)``.

    Args:
        risk: float ``[N]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        train_time_days: float ``[M]``.
        train_event: bool ``[M]``.
        tau: only events before ``tau`` count.
        tied_tol: risk-tie tolerance.

    Returns:
        The index, NaN without a comparable pair.

    Raises:
        ValueError: bad inputs; the censoring distribution unknown or zero at an event before
            ``tau`` (scikit-survival's message).
    """
    t = check_times(time_days, "time_days")
    ev = as_event(event, "event", t.shape[0])
    r = _as_risk(risk, t.shape[0])
    tt = check_times(train_time_days, "train_time_days")
    tev = as_event(train_event, "train_event", tt.shape[0])
    a = uno_weights(t, ev, tt, tev, float(tau))
    return RiskConcordance(r, t, ev, tied_tol).score(a)


def _as_risk(risk: npt.ArrayLike, n: int) -> FloatArray:
    r = np.asarray(risk, dtype=np.float64)
    if r.shape != (n,) or not np.all(np.isfinite(r)):
        raise ValueError(f"risk: expected finite float [{n}], got shape {r.shape}")
    return r


# ---------------------------------------------------------------------------------------------
# IPCW scores at days: Brier, IBS, td-AUC
# ---------------------------------------------------------------------------------------------


def horizon_key(day: float) -> str:
    """The ``metrics.json`` key of a day value: ``"30"`` for 30.0, ``"30.5"`` for 30.5."""
    return str(int(day)) if float(day).is_integer() else repr(float(day))


def follow_up_limit(split: _Split) -> float:
    """Days ``d`` with ``min(t) ≤ d <`` this limit are inside the follow-up (IPCW-estimable):
    someone in the split is followed beyond d, and the train censoring distribution is known."""
    return min(float(split.time.max()), float(split.train_time.max()))


def _capped_y(split: _Split, max_day: float) -> npt.NDArray[Any]:
    """The split's ``(event, time)`` with times above ``max_day`` lowered half-way towards
    :func:`follow_up_limit`.

    Every case/control label and every censoring weight that scikit-survival's Brier score and
    cumulative/dynamic AUC use at days ``≤ max_day`` is unchanged, but no weight is asked at the
    last train time, where the censoring distribution may be zero or unknown.
    """
    cap = 0.5 * (max_day + follow_up_limit(split))
    return Surv.from_arrays(split.event, np.minimum(split.time, cap))


def ibs_grid_days(split: _Split) -> FloatArray:
    """The IBS day grid: whole days (step ``ceil(horizon / 365)``) below the horizon, inside
    ``[min(t), follow_up_limit)``: float64 ``[G]``, possibly with fewer than two points."""
    step = max(1, math.ceil(split.horizon / IBS_MAX_POINTS))
    days = np.arange(step, math.ceil(split.horizon), step, dtype=np.float64)
    keep = (days >= split.time.min()) & (days < follow_up_limit(split)) & (days < split.horizon)
    return days[keep]


def brier_contributions(split: _Split, grid: FloatArray) -> FloatArray:
    """Each sample's share of the IBS on ``grid``: float ``[N]`` whose mean is the IBS.

    ``(1 / span) ∫ [S_i(d)² · case_i(d) / G(t_i) + (1 − S_i(d))² · control_i(d) / G(d)] dd`` by
    the trapezoid rule, exactly the terms of scikit-survival's ``brier_score`` (zeros of ``G``
    read as infinite weights' reciprocal 0), so a weighted mean is the IBS of a resampled split.
    """
    y = _capped_y(split, float(grid[-1]))
    cens = CensoringDistributionEstimator().fit(
        Surv.from_arrays(split.train_event, split.train_time)
    )
    g_grid = cens.predict_proba(grid)
    g_grid[g_grid == 0] = np.inf
    g_obs = cens.predict_proba(y["time"])
    g_obs[g_obs == 0] = np.inf
    col = edge_index(split.edges, grid)
    out = np.empty(split.time.shape[0])
    rows = max(1, _CHUNK_ENTRIES // grid.shape[0])  # bounded memory: [rows, G] at a time
    for r0 in range(0, out.shape[0], rows):
        r = slice(r0, r0 + rows)
        s = split.survival[r][:, col].astype(np.float64)  # [rows, G]
        t = y["time"][r][:, None]
        case = (t <= grid) & split.event[r][:, None]
        control = t > grid
        terms = np.square(s) * case / g_obs[r][:, None] + np.square(1.0 - s) * control / g_grid
        out[r] = np.trapezoid(terms, grid, axis=1)
    return out / (grid[-1] - grid[0])


def _valid_days(
    split: _Split, days: Sequence[float], warn: list[str]
) -> tuple[FloatArray, list[str]]:
    """The evaluation days ``≤ horizon`` inside the follow-up; the others skipped with a warning."""
    lo, hi = float(split.time.min()), follow_up_limit(split)
    kept: list[float] = []
    for d in sorted({float(x) for x in days}):
        if d > split.horizon:
            warn.append(f"horizon {horizon_key(d)} days skipped: beyond the task horizon")
        elif not lo <= d < hi:
            warn.append(
                f"horizon {horizon_key(d)} days skipped: outside the follow-up range "
                f"[{lo:g}, {hi:g}) (nobody followed beyond it, or the train censoring unknown)"
            )
        else:
            kept.append(d)
    return np.asarray(kept, dtype=np.float64), [horizon_key(d) for d in kept]


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def calibration_days(
    survival_at_horizon: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    horizon_days: float,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Predicted risk ``1 − S(horizon)`` against the Kaplan–Meier risk by the horizon, per bin.

    Bins are quantiles (deciles by default) of the predicted risk, duplicate edges merged, empty
    bins dropped. In each bin the observed risk is ``1 − KM(horizon)`` of that bin's samples
    (scikit-survival's estimator, held at its last value; 0 without an event).

    Args:
        survival_at_horizon: float ``[N]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        horizon_days: the horizon.
        n_bins: number of quantile bins before merging.

    Returns:
        ``{"horizon_days", "ece", "bin_edges" [B + 1], "predicted" [B], "observed" [B],
        "n" [B], "n_at_risk" [B]}``; ``ece = Σ_b n_b / N · |predicted_b − observed_b|``;
        ``n_at_risk``: samples still followed at the horizon.
    """
    t = check_times(time_days, "time_days")
    ev = as_event(event, "event", t.shape[0])
    risk = 1.0 - _as_risk(survival_at_horizon, t.shape[0])
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    edges = _bin_edges(risk, n_bins, "quantile")
    bin_id = np.clip(np.searchsorted(edges[1:-1], risk, side="right"), 0, edges.shape[0] - 2)
    keep: list[int] = []
    pred, obs, cnt, at_risk = [], [], [], []
    for b in range(edges.shape[0] - 1):
        m = bin_id == b
        if not m.any():
            continue
        keep.append(b)
        pred.append(float(risk[m].mean()))
        obs.append(_km_risk(ev[m], t[m], float(horizon_days)))
        cnt.append(int(m.sum()))
        at_risk.append(int(np.sum(t[m] >= horizon_days)))
    n = np.asarray(cnt, dtype=np.float64)
    gap = np.abs(np.asarray(pred) - np.asarray(obs))
    return {
        "horizon_days": float(horizon_days),
        "ece": float(np.sum(n / n.sum() * gap)),
        "bin_edges": [float(x) for x in np.append(edges[keep], edges[keep[-1] + 1])],
        "predicted": pred,
        "observed": obs,
        "n": cnt,
        "n_at_risk": at_risk,
    }


def _km_risk(ev: BoolArray, t: FloatArray, day: float) -> float:
    """1 − Kaplan–Meier survival at ``day`` (held past the last time; 0 without an event)."""
    if not ev.any():
        return 0.0
    times, surv = kaplan_meier_estimator(ev, t)
    i = int(np.searchsorted(times, day, side="right")) - 1
    return 0.0 if i < 0 else float(1.0 - surv[i])


# ---------------------------------------------------------------------------------------------
# Bootstrap over subjects
# ---------------------------------------------------------------------------------------------


def subject_bootstrap_counts(subject_id: npt.ArrayLike, n_bootstrap: int, seed: int) -> IntArray:
    """How many times each sample is taken in each replicate: int64 ``[B, N]``.

    Replicate b draws U subjects with replacement from the U sorted unique subjects
    (:func:`~ehrsurv_dist.metrics.bootstrap.bootstrap_indices` with ``seed``) and takes all their
    samples, so the samples of one subject always share a count.
    """
    sid = np.asarray(subject_id)
    uniq, inv = np.unique(sid, return_inverse=True)
    out = np.empty((n_bootstrap, sid.shape[0]), dtype=np.int64)
    for b, draw in enumerate(bootstrap_indices(uniq.shape[0], n_bootstrap, seed)):
        out[b] = np.bincount(draw, minlength=uniq.shape[0])[inv]
    return out


# ---------------------------------------------------------------------------------------------
# The metrics.json entry
# ---------------------------------------------------------------------------------------------


def calendar_metrics(
    survival: npt.ArrayLike,
    edges: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    subject_id: npt.ArrayLike,
    *,
    train_time_days: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons_days: Sequence[float] = (30, 90, 365),
    n_bootstrap: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    tied_tol: float = 1e-8,
) -> dict[str, Any]:
    """Every metric of one split on the day scale: its ``metrics.json`` entry.

    Args:
        survival: float ``[N, K]``, S at the bins' right edges ``e_1..e_K``.
        edges: float ``[K + 1]``, ``e_0 = 0``, ``e_K`` = the horizon in days.
        time_days: float ``[N]``, days to the event or censoring, capped at the horizon.
        event: bool ``[N]``.
        subject_id: int ``[N]``; the bootstrap resamples subjects.
        train_time_days: float ``[M]``, the train split (censoring distribution, IPCW).
        train_event: bool ``[M]``.
        horizons_days: days for ``brier`` and ``td_auc``; those beyond the horizon or outside the
            follow-up range (``min(t) ≤ d < min(max t, max train t)``) are skipped with a warning.
        n_bootstrap: replicates for the ``ci`` intervals (0: none).
        seed: bootstrap seed.
        alpha: intervals cover ``1 − alpha``.
        n_bins: calibration bins (quantiles of predicted risk).
        tied_tol: risk-tie tolerance of Harrell's and Uno's C.

    Returns:
        ``{"c_index_td", "c_index_harrell", "c_index_uno", "ibs", "ibs_days": [first, last,
        step], "brier": {"<day>": f}, "td_auc": {"<day>": f}, "calibration": {...} (see
        :func:`calibration_days`), "n_samples", "n_subjects", "n_events", "risk_score",
        "horizon_days", "ci": {metric: [lo, hi]}, "warnings": [str]}``. Undefined metrics are NaN
        (pass through :func:`~ehrsurv_dist.metrics.jsonable` before strict JSON); each warning is
        also issued as a ``UserWarning``.

    Raises:
        ValueError: malformed inputs.
    """
    split = _check_split(
        survival, edges, time_days, event, subject_id, train_time_days, train_event
    )
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected an int >= 0, got {n_bootstrap!r}")
    warn: list[str] = []
    ev = split.event
    s_h = split.survival[:, -1].astype(np.float64)
    risk = 1.0 - s_h
    out: dict[str, Any] = {
        "n_samples": int(ev.shape[0]),
        "n_subjects": int(np.unique(split.subject).shape[0]),
        "n_events": int(ev.sum()),
        "risk_score": RISK_SCORE,
        "horizon_days": split.horizon,
    }
    if not ev.any():
        warn.append("no event in the split: concordances, Brier scores and td-AUC are undefined")
    td = TdConcordanceDays(split.survival, split.edges, split.time, ev) if ev.any() else None
    out["c_index_td"] = td.score() if td is not None else math.nan
    rc = RiskConcordance(risk, split.time, ev, tied_tol)
    out["c_index_harrell"] = rc.score(ev.astype(np.float64))
    uno_a: FloatArray | None = None
    try:
        uno_a = uno_weights(split.time, ev, split.train_time, split.train_event, split.horizon)
        out["c_index_uno"] = rc.score(uno_a)
    except ValueError as e:
        warn.append(f"c_index_uno undefined: {e}")
        out["c_index_uno"] = math.nan

    grid = ibs_grid_days(split)
    contrib: FloatArray | None = None
    out["ibs_days"] = (
        [float(grid[0]), float(grid[-1]), float(grid[1] - grid[0])] if grid.size > 1 else []
    )
    if grid.size >= 2 and ev.any():
        y = _capped_y(split, float(grid[-1]))
        y_train = Surv.from_arrays(split.train_event, split.train_time)
        s_grid = survival_at_days(split.survival, split.edges, grid)
        out["ibs"] = float(integrated_brier_score(y_train, y, s_grid, grid))
        contrib = brier_contributions(split, grid)
    else:
        out["ibs"] = math.nan
        warn.append("ibs undefined: fewer than two grid days inside the follow-up, or no event")

    out.update(_horizon_scores(split, horizons_days, warn))
    out["calibration"] = calibration_days(s_h, split.time, ev, split.horizon, n_bins)

    out["ci"] = {}
    if n_bootstrap > 0:
        reps = _bootstrap(split, td, rc, uno_a, contrib, n_bootstrap, seed)
        out["ci"] = {k: list(percentile_interval(v.tolist(), alpha)) for k, v in reps.items()}
    for w in warn:
        warnings.warn(w, UserWarning, stacklevel=2)
    out["warnings"] = warn
    return out


def _horizon_scores(
    split: _Split, horizons_days: Sequence[float], warn: list[str]
) -> dict[str, dict[str, float]]:
    """``{"brier": {"<day>": f}, "td_auc": {"<day>": f}}`` at the valid days."""
    out: dict[str, dict[str, float]] = {"brier": {}, "td_auc": {}}
    days, keys = _valid_days(split, horizons_days, warn)
    if days.size == 0 or not split.event.any():
        return out
    y = _capped_y(split, float(days[-1]))
    y_train = Surv.from_arrays(split.train_event, split.train_time)
    s = survival_at_days(split.survival, split.edges, days)  # [N, H]
    _, scores = brier_score(y_train, y, s, days)
    out["brier"] = {k: float(v) for k, v in zip(keys, scores, strict=True)}
    first_case = float(split.time[split.event].min())
    for i, (d, k) in enumerate(zip(days, keys, strict=True)):
        if d < first_case:
            warn.append(f"td_auc at {k} days undefined: no event by then")
            out["td_auc"][k] = math.nan
            continue
        auc, _ = cumulative_dynamic_auc(y_train, y, 1.0 - s[:, i], d)
        out["td_auc"][k] = float(auc[0])
    return out


def _bootstrap(
    split: _Split,
    td: TdConcordanceDays | None,
    rc: RiskConcordance,
    uno_a: FloatArray | None,
    contrib: FloatArray | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, FloatArray]:
    """Replicate values of :data:`CI_METRICS` (NaN where undefined), subjects resampled."""
    counts = subject_bootstrap_counts(split.subject, n_bootstrap, seed)
    nan = np.full(n_bootstrap, np.nan)
    out = {k: nan.copy() for k in CI_METRICS}
    ev_f = split.event.astype(np.float64)
    entries = max(rc.pairs.n_entries, td.pairs.n_entries if td is not None else 0, 1)
    chunk = max(1, _CHUNK_ENTRIES // (entries + split.time.shape[0]))
    for b0 in range(0, n_bootstrap, chunk):
        w = counts[b0 : b0 + chunk].astype(np.float64)
        sl = slice(b0, b0 + w.shape[0])
        if td is not None:
            out["c_index_td"][sl] = td.weighted(w)
        out["c_index_harrell"][sl] = rc.weighted(w, ev_f)
        if uno_a is not None:
            out["c_index_uno"][sl] = rc.weighted(w, uno_a)
        if contrib is not None:
            out["ibs"][sl] = (w @ contrib) / w.sum(axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# MEDS-evaluation output and the time axis
# ---------------------------------------------------------------------------------------------


def meds_eval_table(
    subject_id: npt.ArrayLike,
    prediction_time_us: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    survival_at_horizon: npt.ArrayLike,
    horizon_days: float,
) -> pa.Table:
    """Predictions in the MEDS-evaluation form (binary task: an event within the horizon).

    Args:
        subject_id: int ``[N]``.
        prediction_time_us: int64 ``[N]`` µs since the epoch, or datetime64 ``[N]``.
        time_days: float ``[N]`` to the event or censoring.
        event: bool ``[N]``.
        survival_at_horizon: float ``[N]`` predicted ``S(horizon)``.
        horizon_days: the horizon.

    Returns:
        Columns ``subject_id`` int64, ``prediction_time`` timestamp[us], ``boolean_value`` bool
        (true: event at or before the horizon; false: followed to the horizon event-free; null:
        censored before the horizon), ``predicted_boolean_value`` bool (probability ≥ 0.5),
        ``predicted_boolean_probability`` float64 ``1 − S(horizon)``.

    Raises:
        ValueError: bad shapes or values.
    """
    sid = np.asarray(subject_id)
    n = sid.shape[0] if sid.ndim == 1 else -1
    if n < 0 or sid.dtype.kind not in "iu":
        raise ValueError(f"subject_id: expected a 1-D int array, got {sid.dtype} {sid.shape}")
    pt = np.asarray(prediction_time_us)
    if pt.dtype.kind == "M":
        pt = pt.astype("datetime64[us]").astype(np.int64)
    if pt.shape != (n,) or pt.dtype.kind not in "iu":
        raise ValueError(f"prediction_time_us: expected int64 µs or datetime64 [{n}]")
    t = check_times(time_days, "time_days", n)
    ev = as_event(event, "event", n)
    prob = 1.0 - _as_risk(survival_at_horizon, n)
    label = ev & (t <= horizon_days)
    unknown = ~ev & (t < horizon_days)
    return pa.table(
        {
            "subject_id": pa.array(sid.astype(np.int64), type=pa.int64()),
            "prediction_time": pa.array(pt.astype(np.int64), type=pa.int64()).cast(
                pa.timestamp("us")
            ),
            "boolean_value": pa.array(label, mask=unknown, type=pa.bool_()),
            "predicted_boolean_value": pa.array(prob >= 0.5, type=pa.bool_()),
            "predicted_boolean_probability": pa.array(prob, type=pa.float64()),
        }
    )


def time_axis_dict(edges: npt.ArrayLike) -> dict[str, Any]:
    """``{"axis": "calendar", "unit": "day", "edges": [e_0, …, e_K]}`` (predictions/time_axis.json)."""
    return {"axis": "calendar", "unit": "day", "edges": [float(x) for x in check_edges(edges)]}


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot_calibration_days(
    calibration: Mapping[str, Any], path: str | os.PathLike[str], *, dpi: int = 100
) -> Path:
    """Predicted against Kaplan–Meier risk by the horizon per risk decile, with the diagonal.

    Args:
        calibration: the dict of :func:`calibration_days` (``calendar_metrics()["calibration"]``).
        path: target PNG (written atomically; parent folders created).
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: a mapping without the calibration keys, or mismatched lengths.
    """
    from ehrsurv_dist.metrics.plots import calibration_figure

    h = horizon_key(float(calibration.get("horizon_days", float("nan"))))
    return calibration_figure(
        calibration,
        "horizon_days",
        path,
        xlabel=f"predicted P(event by {h} days) = 1 − S({h})",
        title=f"Calibration at {h} days",
        points="risk deciles (size: n)",
        dpi=dpi,
    )


def plot_survival_days(
    survival: npt.ArrayLike,
    edges: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    dpi: int = 100,
) -> Path:
    """Mean predicted survival over days against the split's Kaplan–Meier curve.

    The prediction is drawn as the metrics read it (:func:`edge_index`): ``S(e_j)`` over
    ``(e_{j-1}, e_j]``, a step at each bin edge (marked); the Kaplan–Meier curve of
    ``(time_days, event)`` is scikit-survival's, a right-continuous step.

    Args:
        survival: float ``[N, K]``.
        edges: float ``[K + 1]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        path: target PNG (written atomically).
        dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    from ehrsurv_dist import atomic

    e = check_edges(edges)
    s = check_survival(survival, e.shape[0] - 1)
    t = check_times(time_days, "time_days", s.shape[0])
    ev = as_event(event, "event", s.shape[0])
    mean_s = np.concatenate([[1.0], s.astype(np.float64).mean(axis=0)])
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    label = f"mean predicted S (n={s.shape[0]})"
    ax.step(e, mean_s, where="pre", color="C0", lw=2, label=label)
    ax.plot(e[1:], mean_s[1:], "o", color="C0", ms=3)
    lowest = float(mean_s.min())
    if ev.any():
        km_t, km_s = kaplan_meier_estimator(ev, t)
        km_label = f"Kaplan–Meier ({int(ev.sum())} events)"
        ax.step(np.r_[0.0, km_t], np.r_[1.0, km_s], where="post", color="black", label=km_label)
        lowest = min(lowest, float(km_s.min()))
    ax.set_xlim(0, float(e[-1]))
    ax.set_ylim(max(0.0, lowest - 0.05), 1.01)
    ax.set_xlabel("days after the prediction time (steps: bin edges)")
    ax.set_ylabel("event-free probability")
    ax.set_title("Predicted vs observed survival")
    ax.legend(loc="lower left")
    return Path(atomic.write_png(fig, path, dpi))
