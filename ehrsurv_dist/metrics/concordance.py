"""Concordance of predicted survival with observed times (docs/design.md §4).

Antolini's time-dependent C on the survival curves (primary), Harrell's and Uno's C on a scalar
risk score (scikit-survival, with an exact grouped-by-time path for large splits), and the
length-only leakage baseline. Times follow :func:`~ehrsurv_dist.metrics.to_sksurv_time`.
Pure numpy / scipy / scikit-survival.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

from ehrsurv_dist.metrics.hazards import HazardsLike, HazardTable, as_hazard_table
from ehrsurv_dist.metrics.inputs import (
    BoolArray,
    FloatArray,
    IntArray,
    as_event,
    as_risk,
    check_pair,
    sksurv_y,
)

# scikit-survival's Harrell C loops over events in Python with an O(N) step each (53 s at
# 150,000 subjects here). Above this size, the same statistic is computed per distinct event
# time, which is cheap because times are visit indices; a test pins equality with sksurv.
HARRELL_SKSURV_MAX_N = 20_000
HARRELL_MAX_GROUPS = 2_000


class TdConcordance:
    """Antolini's time-dependent concordance, prepared once, scored with optional subject weights.

    For each distinct event visit t: the comparators ``{j : T_j > t}`` sorted by ``log S_j(t)``,
    and for each event at t the positions where ``log S_i(t) ± tol`` fall in that order. Counting
    concordant and tied pairs is then a difference of positions (or of cumulative weights, for the
    bootstrap). Memory: ``Σ_t |{j : T_j > t}| ≤`` number of real visits.

    Args:
        table: the split's hazards (N subjects).
        event: bool ``[N]``, checked.
        tied_tol: tolerance on ``log S`` for ties, ``≥ 0``.
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
    ev = as_event(event, "event", table.n)
    if not tied_tol >= 0:
        raise ValueError(f"tied_tol: must be >= 0, got {tied_tol}")
    return TdConcordance(table, ev, float(tied_tol)).score()


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
    lv, ev = check_pair(last_visit, event)
    r = as_risk(risk, "risk", lv.shape[0])
    if not ev.any() or lv.shape[0] < 2:
        return math.nan
    time = lv + 0.5 * ev
    if lv.shape[0] > HARRELL_SKSURV_MAX_N and np.unique(time[ev]).size <= HARRELL_MAX_GROUPS:
        return _harrell_grouped(r, time, ev, tied_tol)
    try:
        return float(concordance_index_censored(ev, time, r, tied_tol=tied_tol)[0])
    except NoComparablePairException:
        return math.nan


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
    lv, ev = check_pair(last_visit, event)
    tlv, tev = check_pair(train_last_visit, train_event, "train_")
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
    lv, ev = check_pair(last_visit, event)
    tlv, tev = check_pair(train_last_visit, train_event, "train_")
    r = as_risk(risk, "risk", lv.shape[0])
    if lv.shape[0] < 2:
        return math.nan
    if tau is None:
        tau = uno_default_tau(lv, ev, tlv, tev)
    t = lv + 0.5 * ev
    counted = ev if tau is None else ev & (t < tau)
    if not counted.any():
        return math.nan
    y_train, y_test = sksurv_y(tlv, tev), sksurv_y(lv, ev)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = concordance_index_ipcw(y_train, y_test, r, tau=tau, tied_tol=tied_tol)[0]
    except NoComparablePairException:
        return math.nan
    return float(c)


def length_only_baseline(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> dict[str, float]:
    """Leakage diagnostic (docs/survival.md): how well sequence length alone predicts the event.

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
    lv, ev = check_pair(last_visit, event)
    n_ev = int(ev.sum())
    n_cens = lv.shape[0] - n_ev
    if n_ev == 0 or n_cens == 0:
        return {"auc_length_event": math.nan, "auc_length_event_signed": math.nan}
    ranks = rankdata(lv)  # average ranks: ties count 0.5
    a = float((ranks[ev].sum() - n_ev * (n_ev + 1) / 2) / (n_ev * n_cens))
    return {"auc_length_event": max(a, 1.0 - a), "auc_length_event_signed": a}
