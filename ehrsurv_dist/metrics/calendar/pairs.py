"""Weighted pair counts (:class:`PairSums`) and the concordances on the day scale: td-C,
Harrell's and Uno's C, each for a whole split and its bootstrap replicates.

Conventions: :mod:`ehrsurv_dist.metrics.calendar`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from ehrsurv_dist.metrics.calendar.inputs import (
    _dense_rank,
    check_edges,
    check_survival,
    check_times,
    edge_index,
    time_keys,
)
from ehrsurv_dist.metrics.inputs import BoolArray, FloatArray, IntArray, as_event


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
