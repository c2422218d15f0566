"""Synthetic MEDS cohorts with known per-visit hazards (seed-spec §8.1 + §8.3, DESIGN.md §2).

Trajectories follow the seed's realistic generator (8 disease patterns with dx / treatment /
monitoring codes, comorbidity add-ons, routine codes); outcomes follow the v2 hazard process:
at visit ``t`` the features x1..x5 (chronic count, decayed acute events, comorbid pairs,
log-treatments, age) give ``h_t = sigmoid(α + K·βᵀx_t + frailty)`` where ``K`` is ``signal``.

Adapted to DESIGN.md §2: the event (or drop-out) happens in the interval *after* a visit, and no
visit is emitted after it. A subject censored at visit T (drop-out, or the end of its planned
visits) is not observed through the interval after T, so an event drawn for that interval is
not seen: censoring wins the tie, which makes the likelihood of DESIGN.md §2 exact for this data. So the history of subject i is exactly its visits ``0..T_i`` and the
true hazards ``h_0..h_T`` are written to ``truth.parquet`` next to the data.

Generation is vectorised over blocks of :data:`BLOCK` subjects; block ``b`` draws from
``default_rng([seed, b])``, so the output is the same for a seed whatever the shard count.
Shards are written one row group per block (bounded memory).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.data.splits import hash_splits
from ehrsurv_dist.errors import OutputError

BLOCK = 8192
DAY_US = 86_400_000_000
US_PER_YEAR = 365.25 * DAY_US
STUDY_START = np.datetime64("2010-01-01T00:00:00", "us").astype(np.int64)


@dataclass(frozen=True)
class Disease:
    name: str
    dx: tuple[int, ...]
    tx: tuple[int, ...]
    mon: tuple[int, ...]
    prevalence: float
    ages: tuple[int, int]
    progression_visits: int
    chronic: bool


# seed-spec §8.1 patterns; chronic/acute split from §8.3
DISEASES: tuple[Disease, ...] = (
    Disease(
        "diabetes_type2",
        (250, 251, 252),
        (100, 101, 102, 103),
        (300, 301, 302),
        0.10,
        (40, 80),
        8,
        True,
    ),
    Disease("hypertension", (401, 402, 403), (110, 111, 112), (310, 311), 0.15, (35, 85), 6, True),
    Disease("asthma", (493, 494), (120, 121, 122), (320, 321), 0.08, (5, 70), 5, False),
    Disease("depression", (296, 311), (130, 131, 132), (330, 331), 0.12, (18, 75), 7, False),
    Disease("copd", (496, 491, 492), (140, 141, 142), (340, 341), 0.06, (50, 85), 6, True),
    Disease("heart_failure", (428, 429), (150, 151, 152), (350, 351), 0.05, (55, 90), 8, True),
    Disease("ckd", (585, 586), (160, 161), (360, 361), 0.07, (50, 85), 7, True),
    Disease("arthritis", (714, 715), (170, 171, 172), (370, 371), 0.09, (30, 75), 6, True),
)
_IDX = {d.name: i for i, d in enumerate(DISEASES)}
# (from, to, probability) comorbidity add-ons
COMORBID_ADDONS = (
    ("diabetes_type2", "hypertension", 0.4),
    ("diabetes_type2", "ckd", 0.3),
    ("hypertension", "heart_failure", 0.25),
    ("copd", "heart_failure", 0.2),
    ("depression", "diabetes_type2", 0.15),
)
# comorbid pairs of the hazard (x3) with their weights
COMORBID_PAIRS = (
    ("heart_failure", "ckd", 1.2),
    ("heart_failure", "copd", 1.1),
    ("diabetes_type2", "ckd", 1.0),
    ("diabetes_type2", "hypertension", 0.6),
)
ROUTINE = ((500, 0.30), (501, 0.20), (502, 0.15), (503, 0.10))

# Code kinds and their MEDS vocabularies
DX, TX, MON, ROUT = 0, 1, 2, 3
_PREFIX = {DX: "ICD9CM", TX: "RX", MON: "LOINC", ROUT: "CPT"}
_DESC = {DX: "diagnosis", TX: "treatment", MON: "monitoring", ROUT: "routine"}


@dataclass(frozen=True)
class HazardParams:
    """v2 hazard process (seed-spec §8.3); ``signal`` multiplies the β coefficients."""

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


@dataclass(frozen=True)
class Preset:
    subjects: int
    max_visits: int
    shards: int


PRESETS: dict[str, Preset] = {
    "smoke": Preset(200, 25, 1),
    "local": Preset(2_000, 50, 2),
    "pod": Preset(20_000, 80, 4),
}


def _build_code_table() -> tuple[list[str], dict[tuple[int, int], int]]:
    """All code strings, and (kind, number) → index into that list."""
    names: list[str] = []
    index: dict[tuple[int, int], int] = {}

    def add(kind: int, num: int) -> None:
        if (kind, num) not in index:
            index[(kind, num)] = len(names)
            names.append(f"{_PREFIX[kind]}/{num}")

    for d in DISEASES:
        for c in d.dx:
            add(DX, c)
        for c in d.tx:
            add(TX, c)
        for c in d.mon:
            add(MON, c)
    for c, _ in ROUTINE:
        add(ROUT, c)
    return names, index


CODE_NAMES, _CODE_INDEX = _build_code_table()
N_DIS = len(DISEASES)
# per disease: code-table indices of its dx / tx / mon codes, padded to width 4 with -1
_DX_TAB = np.full((N_DIS, 4), -1, np.int64)
_TX_TAB = np.full((N_DIS, 4), -1, np.int64)
_MON_TAB = np.full((N_DIS, 4), -1, np.int64)
_N_DX = np.array([len(d.dx) for d in DISEASES])
_N_TX = np.array([len(d.tx) for d in DISEASES])
_N_MON = np.array([len(d.mon) for d in DISEASES])
for _i, _d in enumerate(DISEASES):
    _DX_TAB[_i, : len(_d.dx)] = [_CODE_INDEX[(DX, c)] for c in _d.dx]
    _TX_TAB[_i, : len(_d.tx)] = [_CODE_INDEX[(TX, c)] for c in _d.tx]
    _MON_TAB[_i, : len(_d.mon)] = [_CODE_INDEX[(MON, c)] for c in _d.mon]
_ROUT_IDX = np.array([_CODE_INDEX[(ROUT, c)] for c, _ in ROUTINE])
_ROUT_P = np.array([p for _, p in ROUTINE])
_CODE_KIND = np.empty(len(CODE_NAMES), np.int64)
for (_k, _n), _j in _CODE_INDEX.items():
    _CODE_KIND[_j] = _k
_CHRONIC = np.array([d.chronic for d in DISEASES])


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


def _seg_first(
    flag: np.ndarray, local: np.ndarray, starts: np.ndarray, default: np.ndarray
) -> np.ndarray:
    """Per segment, the first local index where ``flag`` holds, else ``default``."""
    big = np.iinfo(np.int64).max
    vals = np.where(flag, local, big)
    first = np.minimum.reduceat(vals, starts)
    return np.where(first == big, default, first)


def generate_block(
    block: int, n: int, first_id: int, seed: int, max_visits: int, hp: HazardParams
) -> Block:
    """Generate ``n`` subjects with ids ``first_id..first_id+n-1`` from ``rng([seed, block])``."""
    rng = np.random.default_rng([seed, block])
    sid = np.arange(first_id, first_id + n, dtype=np.int64)
    base_age = rng.integers(20, 70, n)
    start_day = rng.integers(0, 3650, n)  # study entry, days after 2010-01-01
    start_us = STUDY_START + start_day * DAY_US
    birth_us = (
        start_us - (base_age * US_PER_YEAR).astype(np.int64) - rng.integers(0, 365, n) * DAY_US
    )
    sex = rng.integers(0, 2, n)
    frailty = rng.normal(0.0, hp.frailty_sd, n) if hp.frailty_sd > 0 else np.zeros(n)

    # --- diseases (enriched chronic prevalence, age-eligible), then comorbidity add-ons ------
    prev = np.array(
        [min(d.prevalence * hp.enrichment, 0.85) if d.chronic else d.prevalence for d in DISEASES]
    )
    lo = np.array([d.ages[0] for d in DISEASES])
    hi = np.array([d.ages[1] for d in DISEASES])
    eligible = (base_age[:, None] >= lo) & (base_age[:, None] <= hi)
    has = (rng.random((n, N_DIS)) < prev) & eligible
    for a, b, p in COMORBID_ADDONS:
        has[:, _IDX[b]] |= has[:, _IDX[a]] & (rng.random(n) < p)

    # --- planned visits: (subject, day, kind, disease) -----------------------------------
    # kind 0: initial routine; 1: dx visit; 2: progression visit; 3: routine-only visit
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
    h_first = np.concatenate([[0], np.cumsum(nv)[:-1]])
    h_cum = np.cumsum(h_gap)
    h_day = h_cum - np.repeat(h_cum[h_first] - h_gap[h_first], nv) + 1
    subj_l.append(h_subj)
    day_l.append(h_day)
    kind_l.append(np.full(len(h_subj), 3))
    dis_l.append(np.full(len(h_subj), -1))

    p_subj = np.concatenate(subj_l)
    p_day = np.concatenate(day_l)
    p_kind = np.concatenate(kind_l)
    p_dis = np.concatenate(dis_l)
    m = len(p_subj)

    # --- codes per planned visit: up to 5 slots, -1 = empty --------------------------------
    slots = np.full((m, 5), -1, np.int64)
    dsafe = np.maximum(p_dis, 0)
    u = rng.random((m, 8))
    r_dx = (u[:, 0] * _N_DX[dsafe]).astype(np.int64)
    r_dx2 = (u[:, 1] * _N_DX[dsafe]).astype(np.int64)
    r_tx = (u[:, 2] * _N_TX[dsafe]).astype(np.int64)
    r_tx2 = (u[:, 3] * _N_TX[dsafe]).astype(np.int64)
    r_mon = (u[:, 4] * _N_MON[dsafe]).astype(np.int64)
    coin = rng.random((m, 4))
    dxv = p_kind == 1
    slots[dxv, 0] = _DX_TAB[dsafe[dxv], r_dx[dxv]]
    two = dxv & (coin[:, 0] < 0.5)
    slots[two, 1] = _DX_TAB[dsafe[two], r_dx2[two]]
    pv = p_kind == 2
    rep = pv & (coin[:, 0] < 0.3)
    slots[rep, 0] = _DX_TAB[dsafe[rep], r_dx[rep]]
    slots[pv, 1] = _TX_TAB[dsafe[pv], r_tx[pv]]
    tx2 = pv & (coin[:, 1] < 0.5)
    slots[tx2, 2] = _TX_TAB[dsafe[tx2], r_tx2[tx2]]
    mon = pv & (coin[:, 2] < 0.6)
    slots[mon, 3] = _MON_TAB[dsafe[mon], r_mon[mon]]
    rout = pv & (coin[:, 3] < 0.2)
    slots[rout, 4] = _ROUT_IDX[(u[rout, 5] * len(ROUTINE)).astype(np.int64)]
    rv = (p_kind == 0) | (p_kind == 3)
    fire = rng.random((m, len(ROUTINE))) < _ROUT_P
    fire[rv & ~fire.any(axis=1), 0] = True  # a routine visit has at least one code
    fire[~rv] = False
    slots[:, : len(ROUTINE)] = np.where(fire, _ROUT_IDX, slots[:, : len(ROUTINE)])

    # --- merge planned visits that fall on the same day into one visit --------------------
    order = np.lexsort((np.arange(m), p_day, p_subj))
    p_subj, p_day, slots = p_subj[order], p_day[order], slots[order]
    p_dis = p_dis[order]
    new_v = np.ones(m, bool)
    new_v[1:] = (p_subj[1:] != p_subj[:-1]) | (p_day[1:] != p_day[:-1])
    v_of_p = np.cumsum(new_v) - 1
    vstart = np.flatnonzero(new_v)
    v_subj = p_subj[vstart]
    v_day = p_day[vstart]
    nvis = len(vstart)
    sub_new = np.ones(nvis, bool)
    sub_new[1:] = v_subj[1:] != v_subj[:-1]
    sstart = np.flatnonzero(sub_new)
    seg_id = np.cumsum(sub_new) - 1
    v_local = np.arange(nvis) - sstart[seg_id]
    keep_v = v_local < max_visits  # cap visits per subject

    # --- per-visit disease event counts -> hazard features --------------------------------
    flat_p = np.repeat(np.arange(m), 5)
    flat_c = slots.reshape(-1)  # [m * 5]
    real = flat_c >= 0
    flat_p, flat_c = flat_p[real], flat_c[real]
    flat_v = v_of_p[flat_p]
    flat_dis = p_dis[flat_p]
    kind = _CODE_KIND[flat_c]
    dx_cnt = np.zeros((nvis, N_DIS), np.int64)
    tx_cnt = np.zeros((nvis, N_DIS), np.int64)
    isd = (kind == DX) & (flat_dis >= 0)
    ist = (kind == TX) & (flat_dis >= 0)
    np.add.at(dx_cnt, (flat_v[isd], flat_dis[isd]), 1)
    np.add.at(tx_cnt, (flat_v[ist], flat_dis[ist]), 1)

    def seg_cumsum(x: np.ndarray) -> np.ndarray:  # exact for integers
        c = np.cumsum(x, axis=0)
        base = c[sstart] - x[sstart]
        return c - base[seg_id]

    diag = seg_cumsum(dx_cnt) > 0
    cumtx = seg_cumsum(tx_cnt)
    x1 = (diag & _CHRONIC).sum(axis=1).astype(np.float64)
    acute_ev = ((dx_cnt > 0) & ~_CHRONIC).sum(axis=1).astype(np.float64)
    x2 = acute_ev.copy()
    decay = np.exp(-1.0 / hp.tau_acute)
    for t in range(1, int(v_local.max(initial=0)) + 1):
        idx = np.flatnonzero(v_local == t)
        x2[idx] = x2[idx - 1] * decay + acute_ev[idx]
    x3 = np.zeros(nvis)
    for a, b, w in COMORBID_PAIRS:
        x3 += w * (diag[:, _IDX[a]] & diag[:, _IDX[b]])
    x4 = (diag * np.log1p(cumtx)).sum(axis=1)
    v_hour = rng.integers(8 * 60, 18 * 60, nvis)  # minute of the day
    v_time = start_us[v_subj] + v_day * DAY_US + v_hour * 60_000_000
    age = (v_time - birth_us[v_subj]) / US_PER_YEAR
    x5 = (age - 50.0) / 20.0
    lin = hp.signal * (
        hp.beta_chronic * x1
        + hp.beta_acute * x2
        + hp.beta_comorbid * x3
        - hp.beta_treat * x4
        + hp.beta_age * x5
    )
    eta_obs = hp.alpha + lin
    h_obs = 1.0 / (1.0 + np.exp(-eta_obs))
    h = 1.0 / (1.0 + np.exp(-(eta_obs + frailty[v_subj])))

    # --- outcome: first event vs geometric drop-out, both after a visit ------------------
    n_kept = np.minimum(np.diff(np.append(sstart, nvis)), max_visits)
    last_possible = n_kept - 1
    ev_fire = (rng.random(nvis) < h) & keep_v
    do_fire = (rng.random(nvis) < hp.dropout_per_visit) & keep_v
    big = np.iinfo(np.int64).max
    e_t = _seg_first(ev_fire, v_local, sstart, np.full(len(sstart), big))
    l_t = _seg_first(do_fire, v_local, sstart, last_possible)
    # Censoring wins a tie: a subject censored at visit T (drop-out, or the end of its planned
    # visits) leaves during the interval after T, so an event there is never observed. That is
    # DESIGN.md §2's likelihood (a censored subject contributes only the intervals t < T); with
    # `<=` every censored subject would be known to have survived interval T as well, and the
    # likelihood would over-estimate the hazards (badly calibrated models, biased IBS).
    event_s = e_t < l_t
    T_s = np.where(event_s, e_t, l_t)
    # every subject has >= 1 planned visit, so segments map 1:1 onto subjects
    subj_of_seg = v_subj[sstart]
    assert len(subj_of_seg) == n and np.all(subj_of_seg == np.arange(n))

    kept = v_local <= T_s[seg_id]
    # outcome time: event in (day_T, day_{T+1}] ; censoring in [day_T, day_{T+1})
    vT = sstart + T_s  # global index of visit T
    has_next = T_s + 1 < np.diff(np.append(sstart, nvis))
    nxt = np.minimum(vT + 1, nvis - 1)
    gap = np.where(has_next, v_day[nxt] - v_day[vT], 1 + rng.integers(0, 180, n))
    gap = np.maximum(gap, 1)
    off_ev = 1 + (rng.random(n) * gap).astype(np.int64)  # 1..gap
    off_ev = np.minimum(off_ev, gap)
    off_ce = (rng.random(n) * gap).astype(np.int64)  # 0..gap-1
    off = np.where(event_s, off_ev, off_ce)
    o_minute = rng.integers(0, 24 * 60, n)
    outcome_us = start_us + (v_day[vT] + off) * DAY_US + o_minute * 60_000_000
    # a censoring on visit T's own day must not precede that visit's time
    same_day = ~event_s & (off == 0)
    outcome_us = np.where(same_day, np.maximum(outcome_us, v_time[vT]), outcome_us)

    # --- rows of kept visits ----------------------------------------------------------------
    row_keep = kept[flat_v]
    rv_idx = flat_v[row_keep]
    row_code = flat_c[row_keep]
    row_subject = sid[v_subj[rv_idx]]
    row_time = v_time[rv_idx]
    row_value = np.full(len(row_code), np.nan, np.float32)
    lab = _CODE_KIND[row_code] == MON
    row_value[lab] = rng.normal(100.0, 15.0, int(lab.sum())).astype(np.float32)

    hz_off = np.concatenate([[0], np.cumsum(T_s + 1)]).astype(np.int64)
    return Block(
        subject_id=sid,
        birth_us=birth_us,
        sex=sex,
        row_subject=row_subject,
        row_time_us=row_time,
        row_code=row_code,
        row_value=row_value,
        event=event_s,
        outcome_us=outcome_us,
        last_visit=T_s.astype(np.int64),
        hazard=h[kept].astype(np.float32),
        hazard_observable=h_obs[kept].astype(np.float32),
        hazard_offsets=hz_off,
    )


_TS = pa.timestamp("us")


def _block_data_table(b: Block, lo: int, hi: int) -> pa.Table:
    """MEDS rows of subjects ``lo:hi`` of the block: static, birth, then visits (time-sorted)."""
    ids = b.subject_id[lo:hi]
    k = hi - lo
    sel = (b.row_subject >= ids[0]) & (b.row_subject <= ids[-1]) if k else np.zeros(0, bool)
    n_rows = len(ids) * 2 + int(sel.sum())
    subj = np.concatenate([ids, ids, b.row_subject[sel]])
    # static rows have a null time; use a mask
    time = np.concatenate([np.zeros(k, np.int64), b.birth_us[lo:hi], b.row_time_us[sel]])
    time_null = np.zeros(n_rows, bool)
    time_null[:k] = True
    sex_code = np.where(b.sex[lo:hi] == 0, len(CODE_NAMES), len(CODE_NAMES) + 1)
    code_idx = np.concatenate([sex_code, np.full(k, len(CODE_NAMES) + 2), b.row_code[sel]])
    value = np.concatenate([np.full(2 * k, np.nan, np.float32), b.row_value[sel]])
    # order: per subject: static first, then birth, then events (already time-ordered)
    group = np.concatenate([np.zeros(k), np.ones(k), np.full(int(sel.sum()), 2)])
    order = np.lexsort((np.arange(n_rows), group, subj))
    all_names = [*CODE_NAMES, "GENDER/F", "GENDER/M", S.BIRTH_CODE]
    codes = pa.DictionaryArray.from_arrays(
        pa.array(code_idx[order].astype(np.int32)), pa.array(all_names)
    ).cast(pa.string())
    tarr = pa.array(time[order], type=pa.int64(), mask=time_null[order]).cast(_TS)
    v = value[order]
    varr = pa.array(v, type=pa.float32(), mask=np.isnan(v))
    return pa.table(
        {S.SUBJECT_ID: pa.array(subj[order]), S.TIME: tarr, S.CODE: codes, S.NUMERIC_VALUE: varr},
        schema=meds.DataSchema.schema().remove(
            meds.DataSchema.schema().get_field_index("text_value")
        ),
    )


def _block_outcomes(b: Block) -> pa.Table:
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(b.subject_id),
            S.OUTCOME_EVENT: pa.array(b.event),
            S.OUTCOME_TIME: pa.array(b.outcome_us, type=pa.int64()).cast(_TS),
        }
    )


def _block_truth(b: Block) -> pa.Table:
    off = pa.array(b.hazard_offsets.astype(np.int32))
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(b.subject_id),
            S.TRUTH_HAZARD: pa.ListArray.from_arrays(off, pa.array(b.hazard)),
            S.TRUTH_HAZARD_OBSERVABLE: pa.ListArray.from_arrays(off, pa.array(b.hazard_observable)),
        }
    )


@dataclass
class SynthResult:
    out: str
    subjects: int
    shards: int
    rows: int
    seconds: float


def synthesize(
    out: str,
    preset: str = "smoke",
    subjects: int | None = None,
    seed: int = 42,
    shards: int | None = None,
    signal: float = 1.0,
    frailty: float = 0.5,
    dropout: float = 0.04,
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write a synthetic MEDS cohort to ``out`` (which must not hold files already).

    Layout: ``data/shard_KKKK.parquet``, ``metadata/{codes,subject_splits}.parquet``,
    ``metadata/dataset.json``, ``outcomes.parquet``, ``truth.parquet``. Every file is written
    under a temporary name and renamed when complete.
    """
    import time as _time

    t0 = _time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    n_total = int(subjects if subjects is not None else p.subjects)
    if n_total < 1:
        raise ValueError("subjects must be >= 1")
    k_shards = int(shards if shards is not None else max(p.shards, -(-n_total // 250_000)))
    k_shards = max(1, min(k_shards, n_total))
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"output directory {out} is not empty; choose a new --out")
    os.makedirs(os.path.join(out, S.DATA_SUBDIR), exist_ok=True)
    os.makedirs(os.path.join(out, "metadata"), exist_ok=True)
    hp = HazardParams(signal=signal, frailty_sd=frailty, dropout_per_visit=dropout)

    first_id = 10_001
    bounds = np.linspace(0, n_total, k_shards + 1).astype(np.int64)  # shard subject ranges
    data_schema = None
    writers: dict[int, tuple[pq.ParquetWriter, str, str]] = {}
    truth_path = os.path.join(out, S.TRUTH_FILE)
    truth_tmp = os.path.join(out, "." + S.TRUTH_FILE + ".tmp")
    truth_w: pq.ParquetWriter | None = None
    outcomes: list[pa.Table] = []
    rows = 0
    n_blocks = -(-n_total // BLOCK)
    try:
        for bi in range(n_blocks):
            lo_g, hi_g = bi * BLOCK, min((bi + 1) * BLOCK, n_total)
            blk = generate_block(bi, hi_g - lo_g, first_id + lo_g, seed, p.max_visits, hp)
            outcomes.append(_block_outcomes(blk))
            tt = _block_truth(blk)
            if truth_w is None:
                truth_w = pq.ParquetWriter(truth_tmp, tt.schema)
            truth_w.write_table(tt)
            # split the block's subjects over the shards whose ranges it overlaps
            for sh in range(k_shards):
                a, b = max(bounds[sh], lo_g), min(bounds[sh + 1], hi_g)
                if a >= b:
                    continue
                tbl = _block_data_table(blk, int(a - lo_g), int(b - lo_g))
                rows += tbl.num_rows
                if sh not in writers:
                    for old in list(writers):  # shards fill in order: close finished ones
                        w, tmp, final = writers.pop(old)
                        w.close()
                        os.replace(tmp, final)
                    final = os.path.join(out, S.DATA_SUBDIR, f"shard_{sh:04d}.parquet")
                    tmp = os.path.join(out, S.DATA_SUBDIR, f".shard_{sh:04d}.parquet.tmp")
                    data_schema = tbl.schema
                    writers[sh] = (pq.ParquetWriter(tmp, data_schema), tmp, final)
                writers[sh][0].write_table(tbl)
            if progress is not None:
                progress(hi_g - lo_g)
        for w, tmp, final in writers.values():
            w.close()
            os.replace(tmp, final)
        writers.clear()
        assert truth_w is not None
        truth_w.close()
        truth_w = None
        os.replace(truth_tmp, truth_path)
    finally:
        for w, tmp, _ in writers.values():
            w.close()
            if os.path.exists(tmp):
                os.remove(tmp)
        if truth_w is not None:
            truth_w.close()
            if os.path.exists(truth_tmp):
                os.remove(truth_tmp)

    out_t = pa.concat_tables(outcomes)
    atomic.write_parquet(out_t, os.path.join(out, S.OUTCOMES_FILE))
    ids = np.asarray(out_t[S.SUBJECT_ID].to_numpy())
    splits = pa.table(
        {S.SUBJECT_ID: pa.array(ids), S.SPLIT: pa.array(hash_splits(ids).tolist(), pa.string())}
    )
    meds.SubjectSplitSchema.validate(splits)
    atomic.write_parquet(splits, os.path.join(out, S.SUBJECT_SPLITS_PATH))
    all_names = [*CODE_NAMES, "GENDER/F", "GENDER/M"]
    descs = [f"{_DESC[_CODE_KIND[i]]} code {CODE_NAMES[i]}" for i in range(len(CODE_NAMES))]
    codes_t = pa.table(
        {
            "code": pa.array(all_names, pa.string()),
            "description": pa.array([*descs, "sex: female", "sex: male"], pa.string()),
            "parent_codes": pa.array([[] for _ in all_names], pa.list_(pa.string())),
        }
    )
    meds.CodeMetadataSchema.validate(codes_t)
    atomic.write_parquet(codes_t, os.path.join(out, S.CODE_METADATA_PATH))
    meta = {
        "dataset_name": f"ehrsurv-synth-{preset}",
        "dataset_version": f"seed{seed}-n{n_total}-signal{signal:g}-frailty{frailty:g}",
        "etl_name": "ehrsurv synth",
        "etl_version": _package_version(),
        "meds_version": meds.__version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(),
    }
    meds.DatasetMetadataSchema.validate(meta)
    atomic.write_json(meta, os.path.join(out, S.DATASET_METADATA_PATH))
    return SynthResult(out, n_total, k_shards, rows, _time.perf_counter() - t0)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ehrsurv_dist")
    except Exception:
        return "0+unknown"
