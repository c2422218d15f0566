"""One block of synthetic subjects: the random draws of the generator, step by step.

:func:`generate_block` runs the steps below on one ``numpy`` generator, ``default_rng([seed,
block])``: subjects, diseases, planned visits, their codes, merged visits, hazards, outcomes and
lab values. Each step draws its numbers in a fixed order, so a seed gives the same cohort bit for
bit (the held-out numbers of ``make demo`` depend on it). The process is described in
:mod:`ehrsurv_dist.data.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehrsurv_dist.constants import DAY_US, US_PER_SECOND, US_PER_YEAR
from ehrsurv_dist.data.synth_codes import (
    CHRONIC,
    CODE_KIND,
    COMORBID_ADDONS,
    COMORBID_PAIRS,
    DISEASE_INDEX,
    DISEASES,
    DX,
    DX_TAB,
    MON,
    MON_TAB,
    N_DIS,
    N_DX,
    N_MON,
    N_TX,
    ROUT_IDX,
    ROUT_P,
    ROUTINE,
    TX,
    TX_TAB,
)
from ehrsurv_dist.ragged import offsets_of

STUDY_START = np.datetime64("2010-01-01T00:00:00", "us").astype(np.int64)
US_PER_MINUTE = 60 * US_PER_SECOND
SLOTS = 5  # code slots of a planned visit


@dataclass(frozen=True)
class HazardParams:
    """v2 hazard process (docs/data.md); ``signal`` multiplies the β coefficients."""

    alpha: float = -2.0
    beta_chronic: float = 0.45
    beta_acute: float = 0.60
    beta_comorbid: float = 0.55
    beta_treat: float = 0.40  # subtracted
    beta_age: float = 0.20
    tau_acute: float = 3.0
    frailty_sd: float = 0.5
    dropout_per_visit: float = 0.04
    enrichment: float = 3.0
    signal: float = 1.0


@dataclass
class Block:
    """One generated block of subjects, ready to write."""

    subject_id: np.ndarray  # [n]
    birth_us: np.ndarray  # [n]
    sex: np.ndarray  # [n] 0/1, a static code
    # event rows (one per code), sorted by subject, then time, then order of appearance
    row_subject: np.ndarray
    row_time_us: np.ndarray
    row_code: np.ndarray  # index into CODE_NAMES
    row_value: np.ndarray  # float32 numeric_value (NaN = null)
    # outcome
    event: np.ndarray  # bool [n]
    outcome_us: np.ndarray  # [n]
    last_visit: np.ndarray  # [n]
    # truth: hazards per kept visit, CSR by subject
    hazard: np.ndarray
    hazard_observable: np.ndarray
    hazard_offsets: np.ndarray  # [n + 1]


# generate_block runs the steps below in order on one generator; each step draws its numbers
# in the order the original single function did, so a seed gives the same cohort bit for bit.


@dataclass
class _Subjects:
    """Per-subject draws: [n] each."""

    base_age: np.ndarray  # whole years at study entry
    start_us: np.ndarray  # study entry
    birth_us: np.ndarray
    sex: np.ndarray
    frailty: np.ndarray  # logit-scale, unobservable


@dataclass
class _Planned:
    """Planned visits, [m] each, before visits on the same day are merged."""

    subject: np.ndarray  # block-local subject index
    day: np.ndarray  # days after study entry
    kind: np.ndarray  # 0 initial routine, 1 dx visit, 2 progression visit, 3 routine-only
    disease: np.ndarray  # index into DISEASES, -1 = none


@dataclass
class _Visits:
    """Planned visits merged per (subject, day): [nvis] each, sorted by subject then day."""

    of_planned: np.ndarray  # [m] visit index of each (sorted) planned visit
    subject: np.ndarray  # block-local subject index
    day: np.ndarray
    local: np.ndarray  # visit number within its subject, 0..
    seg_start: np.ndarray  # [n] first visit of each subject
    seg_id: np.ndarray  # subject of each visit (segment index; equals `subject`)


@dataclass
class _Codes:
    """One entry per filled code slot, in planned-visit then slot order."""

    visit: np.ndarray  # merged visit index
    code: np.ndarray  # index into CODE_NAMES
    disease: np.ndarray  # disease of the planned visit, -1 = none


@dataclass
class _Outcome:
    """Per subject (`event`, `last`, `outcome_us`: [n]) and per visit (`kept`: [nvis])."""

    event: np.ndarray
    last: np.ndarray  # visit T: the event's, or the last observed one
    outcome_us: np.ndarray
    kept: np.ndarray  # visit <= T of its subject


def _seg_first(
    flag: np.ndarray, local: np.ndarray, starts: np.ndarray, default: np.ndarray
) -> np.ndarray:
    """Per segment, the first local index where ``flag`` holds, else ``default``."""
    big = np.iinfo(np.int64).max
    vals = np.where(flag, local, big)
    first = np.minimum.reduceat(vals, starts)
    return np.where(first == big, default, first)


def _draw_subjects(rng: np.random.Generator, n: int, hp: HazardParams) -> _Subjects:
    """Ages at entry, entry dates, births, sex and frailty of ``n`` subjects."""
    base_age = rng.integers(20, 70, n)
    start_day = rng.integers(0, 3650, n)  # study entry, days after 2010-01-01
    start_us = STUDY_START + start_day * DAY_US
    birth_us = (
        start_us - (base_age * US_PER_YEAR).astype(np.int64) - rng.integers(0, 365, n) * DAY_US
    )
    sex = rng.integers(0, 2, n)
    frailty = rng.normal(0.0, hp.frailty_sd, n) if hp.frailty_sd > 0 else np.zeros(n)
    return _Subjects(base_age, start_us, birth_us, sex, frailty)


def draw_diseases(rng: np.random.Generator, base_age: np.ndarray, hp: HazardParams) -> np.ndarray:
    """Which subject has which disease: bool [n, N_DIS].

    Chronic prevalence is enriched, a disease needs an eligible age, then comorbidity add-ons.
    """
    n = len(base_age)
    prev = np.array(
        [min(d.prevalence * hp.enrichment, 0.85) if d.chronic else d.prevalence for d in DISEASES]
    )
    lo = np.array([d.ages[0] for d in DISEASES])
    hi = np.array([d.ages[1] for d in DISEASES])
    eligible = (base_age[:, None] >= lo) & (base_age[:, None] <= hi)
    has = (rng.random((n, N_DIS)) < prev) & eligible
    for a, b, p in COMORBID_ADDONS:
        has[:, DISEASE_INDEX[b]] |= has[:, DISEASE_INDEX[a]] & (rng.random(n) < p)
    return has


def _plan_visits(rng: np.random.Generator, has: np.ndarray) -> _Planned:
    """Planned visits: an optional initial routine one, onset + progression visits per disease,
    and a few routine-only visits for subjects without any disease."""
    n = len(has)
    subj_l, day_l, kind_l, dis_l = [], [], [], []
    init = rng.random(n) < 0.5
    subj_l.append(np.flatnonzero(init))
    day_l.append(np.zeros(int(init.sum()), np.int64))
    kind_l.append(np.zeros(int(init.sum()), np.int64))
    dis_l.append(np.full(int(init.sum()), -1))
    for d_i, dis in enumerate(DISEASES):
        who = np.flatnonzero(has[:, d_i])
        k = len(who)
        if k == 0:
            continue
        onset = rng.integers(1, 720, k)
        npv = dis.progression_visits
        gaps = 14 + rng.exponential(75.0, (k, npv)).astype(np.int64)
        days = np.concatenate([onset[:, None], onset[:, None] + np.cumsum(gaps, axis=1)], axis=1)
        subj_l.append(np.repeat(who, npv + 1))
        day_l.append(days.reshape(-1))  # [k * (npv + 1)]
        kinds = np.full((k, npv + 1), 2)
        kinds[:, 0] = 1
        kind_l.append(kinds.reshape(-1))
        dis_l.append(np.full(k * (npv + 1), d_i))
    healthy = np.flatnonzero(~has.any(axis=1))
    nv = rng.integers(2, 8, len(healthy))
    h_subj = np.repeat(healthy, nv)
    h_gap = 30 + rng.exponential(180.0, len(h_subj)).astype(np.int64)
    # cumulative gaps restarted per subject
    h_first = offsets_of(nv)[:-1]
    h_cum = np.cumsum(h_gap)
    h_day = h_cum - np.repeat(h_cum[h_first] - h_gap[h_first], nv) + 1
    subj_l.append(h_subj)
    day_l.append(h_day)
    kind_l.append(np.full(len(h_subj), 3))
    dis_l.append(np.full(len(h_subj), -1))
    return _Planned(
        np.concatenate(subj_l), np.concatenate(day_l), np.concatenate(kind_l), np.concatenate(dis_l)
    )


def _draw_codes(rng: np.random.Generator, p: _Planned) -> np.ndarray:
    """Codes of each planned visit: int64 [m, SLOTS] indices into CODE_NAMES, -1 = empty."""
    m = len(p.subject)
    slots = np.full((m, SLOTS), -1, np.int64)
    dsafe = np.maximum(p.disease, 0)
    u = rng.random((m, 8))
    r_dx = (u[:, 0] * N_DX[dsafe]).astype(np.int64)
    r_dx2 = (u[:, 1] * N_DX[dsafe]).astype(np.int64)
    r_tx = (u[:, 2] * N_TX[dsafe]).astype(np.int64)
    r_tx2 = (u[:, 3] * N_TX[dsafe]).astype(np.int64)
    r_mon = (u[:, 4] * N_MON[dsafe]).astype(np.int64)
    coin = rng.random((m, 4))
    dxv = p.kind == 1
    slots[dxv, 0] = DX_TAB[dsafe[dxv], r_dx[dxv]]
    two = dxv & (coin[:, 0] < 0.5)
    slots[two, 1] = DX_TAB[dsafe[two], r_dx2[two]]
    pv = p.kind == 2
    rep = pv & (coin[:, 0] < 0.3)
    slots[rep, 0] = DX_TAB[dsafe[rep], r_dx[rep]]
    slots[pv, 1] = TX_TAB[dsafe[pv], r_tx[pv]]
    tx2 = pv & (coin[:, 1] < 0.5)
    slots[tx2, 2] = TX_TAB[dsafe[tx2], r_tx2[tx2]]
    mon = pv & (coin[:, 2] < 0.6)
    slots[mon, 3] = MON_TAB[dsafe[mon], r_mon[mon]]
    rout = pv & (coin[:, 3] < 0.2)
    slots[rout, 4] = ROUT_IDX[(u[rout, 5] * len(ROUTINE)).astype(np.int64)]
    rv = (p.kind == 0) | (p.kind == 3)
    fire = rng.random((m, len(ROUTINE))) < ROUT_P
    fire[rv & ~fire.any(axis=1), 0] = True  # a routine visit has at least one code
    fire[~rv] = False
    slots[:, : len(ROUTINE)] = np.where(fire, ROUT_IDX, slots[:, : len(ROUTINE)])
    return slots


def _merge_visits(p: _Planned, slots: np.ndarray) -> tuple[_Planned, np.ndarray, _Visits]:
    """Sort planned visits by (subject, day) and merge those on the same day into one visit.

    Returns:
        The sorted planned visits, their sorted slots [m, SLOTS], and the merged visits.
    """
    m = len(p.subject)
    order = np.lexsort((np.arange(m), p.day, p.subject))
    p = _Planned(p.subject[order], p.day[order], p.kind[order], p.disease[order])
    slots = slots[order]
    new_v = np.ones(m, bool)
    new_v[1:] = (p.subject[1:] != p.subject[:-1]) | (p.day[1:] != p.day[:-1])
    v_of_p = np.cumsum(new_v) - 1
    vstart = np.flatnonzero(new_v)
    v_subj = p.subject[vstart]
    nvis = len(vstart)
    sub_new = np.ones(nvis, bool)
    sub_new[1:] = v_subj[1:] != v_subj[:-1]
    sstart = np.flatnonzero(sub_new)
    seg_id = np.cumsum(sub_new) - 1
    v_local = np.arange(nvis) - sstart[seg_id]
    return p, slots, _Visits(v_of_p, v_subj, p.day[vstart], v_local, sstart, seg_id)


def _code_entries(p: _Planned, slots: np.ndarray, v: _Visits) -> _Codes:
    """The filled slots as flat entries, each with its merged visit and disease."""
    flat_p = np.repeat(np.arange(len(slots)), SLOTS)
    flat_c = slots.reshape(-1)  # [m * SLOTS]
    real = flat_c >= 0
    flat_p, flat_c = flat_p[real], flat_c[real]
    return _Codes(v.of_planned[flat_p], flat_c, p.disease[flat_p])


def _seg_cumsum(x: np.ndarray, v: _Visits) -> np.ndarray:
    """Cumulative sum over visits, restarted at each subject (exact for integers)."""
    c = np.cumsum(x, axis=0)
    base = c[v.seg_start] - x[v.seg_start]
    return c - base[v.seg_id]


def _linear_predictor(
    v: _Visits, codes: _Codes, age_years: np.ndarray, hp: HazardParams
) -> np.ndarray:
    """K·βᵀx_t of every visit [nvis] from the features x1..x5 (docs/data.md)."""
    nvis = len(v.subject)
    dx_cnt = np.zeros((nvis, N_DIS), np.int64)
    tx_cnt = np.zeros((nvis, N_DIS), np.int64)
    kind = CODE_KIND[codes.code]
    isd = (kind == DX) & (codes.disease >= 0)
    ist = (kind == TX) & (codes.disease >= 0)
    np.add.at(dx_cnt, (codes.visit[isd], codes.disease[isd]), 1)
    np.add.at(tx_cnt, (codes.visit[ist], codes.disease[ist]), 1)
    diag = _seg_cumsum(dx_cnt, v) > 0
    cumtx = _seg_cumsum(tx_cnt, v)
    x1 = (diag & CHRONIC).sum(axis=1).astype(np.float64)
    acute_ev = ((dx_cnt > 0) & ~CHRONIC).sum(axis=1).astype(np.float64)
    x2 = acute_ev.copy()
    decay = np.exp(-1.0 / hp.tau_acute)
    for t in range(1, int(v.local.max(initial=0)) + 1):
        idx = np.flatnonzero(v.local == t)
        x2[idx] = x2[idx - 1] * decay + acute_ev[idx]
    x3 = np.zeros(nvis)
    for a, b, w in COMORBID_PAIRS:
        x3 += w * (diag[:, DISEASE_INDEX[a]] & diag[:, DISEASE_INDEX[b]])
    x4 = (diag * np.log1p(cumtx)).sum(axis=1)
    x5 = (age_years - 50.0) / 20.0
    return hp.signal * (
        hp.beta_chronic * x1
        + hp.beta_acute * x2
        + hp.beta_comorbid * x3
        - hp.beta_treat * x4
        + hp.beta_age * x5
    )


def _draw_outcomes(
    rng: np.random.Generator,
    s: _Subjects,
    v: _Visits,
    v_time: np.ndarray,
    h: np.ndarray,
    max_visits: int,
    hp: HazardParams,
) -> _Outcome:
    """First event vs geometric drop-out, both in the interval after a visit, and its time."""
    n, nvis = len(s.start_us), len(v.subject)
    keep_v = v.local < max_visits  # cap visits per subject
    n_kept = np.minimum(np.diff(np.append(v.seg_start, nvis)), max_visits)
    ev_fire = (rng.random(nvis) < h) & keep_v
    do_fire = (rng.random(nvis) < hp.dropout_per_visit) & keep_v
    big = np.iinfo(np.int64).max
    e_t = _seg_first(ev_fire, v.local, v.seg_start, np.full(len(v.seg_start), big))
    l_t = _seg_first(do_fire, v.local, v.seg_start, n_kept - 1)
    # Censoring wins a tie: a subject censored at visit T (drop-out, or the end of its planned
    # visits) leaves during the interval after T, so an event there is never observed. That is
    # docs/design.md §2's likelihood (a censored subject contributes only the intervals t < T); with
    # `<=` every censored subject would be known to have survived interval T as well, and the
    # likelihood would over-estimate the hazards (badly calibrated models, biased IBS).
    event_s = e_t < l_t
    T_s = np.where(event_s, e_t, l_t)
    # every subject has >= 1 planned visit, so segments map 1:1 onto subjects
    subj_of_seg = v.subject[v.seg_start]
    assert len(subj_of_seg) == n and np.all(subj_of_seg == np.arange(n))

    kept = v.local <= T_s[v.seg_id]
    # outcome time: event in (day_T, day_{T+1}] ; censoring in [day_T, day_{T+1})
    vT = v.seg_start + T_s  # global index of visit T
    has_next = T_s + 1 < np.diff(np.append(v.seg_start, nvis))
    nxt = np.minimum(vT + 1, nvis - 1)
    gap = np.where(has_next, v.day[nxt] - v.day[vT], 1 + rng.integers(0, 180, n))
    gap = np.maximum(gap, 1)
    off_ev = 1 + (rng.random(n) * gap).astype(np.int64)  # 1..gap
    off_ev = np.minimum(off_ev, gap)
    off_ce = (rng.random(n) * gap).astype(np.int64)  # 0..gap-1
    off = np.where(event_s, off_ev, off_ce)
    o_minute = rng.integers(0, 24 * 60, n)
    outcome_us = s.start_us + (v.day[vT] + off) * DAY_US + o_minute * US_PER_MINUTE
    # a censoring on visit T's own day must not precede that visit's time
    same_day = ~event_s & (off == 0)
    outcome_us = np.where(same_day, np.maximum(outcome_us, v_time[vT]), outcome_us)
    return _Outcome(event_s, T_s, outcome_us, kept)


def generate_block(
    block: int, n: int, first_id: int, seed: int, max_visits: int, hp: HazardParams
) -> Block:
    """Generate ``n`` subjects with ids ``first_id..first_id+n-1`` from ``rng([seed, block])``."""
    rng = np.random.default_rng([seed, block])
    sid = np.arange(first_id, first_id + n, dtype=np.int64)
    s = _draw_subjects(rng, n, hp)
    has = draw_diseases(rng, s.base_age, hp)
    planned = _plan_visits(rng, has)
    slots = _draw_codes(rng, planned)
    planned, slots, v = _merge_visits(planned, slots)
    codes = _code_entries(planned, slots, v)

    v_hour = rng.integers(8 * 60, 18 * 60, len(v.subject))  # minute of the day
    v_time = s.start_us[v.subject] + v.day * DAY_US + v_hour * US_PER_MINUTE
    eta_obs = hp.alpha + _linear_predictor(
        v, codes, (v_time - s.birth_us[v.subject]) / US_PER_YEAR, hp
    )
    h_obs = 1.0 / (1.0 + np.exp(-eta_obs))
    h = 1.0 / (1.0 + np.exp(-(eta_obs + s.frailty[v.subject])))
    o = _draw_outcomes(rng, s, v, v_time, h, max_visits, hp)

    # rows of kept visits; lab (monitoring) codes carry a numeric value
    row_keep = o.kept[codes.visit]
    rv_idx = codes.visit[row_keep]
    row_code = codes.code[row_keep]
    row_value = np.full(len(row_code), np.nan, np.float32)
    lab = CODE_KIND[row_code] == MON
    row_value[lab] = rng.normal(100.0, 15.0, int(lab.sum())).astype(np.float32)
    return Block(
        subject_id=sid,
        birth_us=s.birth_us,
        sex=s.sex,
        row_subject=sid[v.subject[rv_idx]],
        row_time_us=v_time[rv_idx],
        row_code=row_code,
        row_value=row_value,
        event=o.event,
        outcome_us=o.outcome_us,
        last_visit=o.last.astype(np.int64),
        hazard=h[o.kept].astype(np.float32),
        hazard_observable=h_obs[o.kept].astype(np.float32),
        hazard_offsets=offsets_of(o.last + 1),
    )
