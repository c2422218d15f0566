"""Synthetic MEDS cohorts on a calendar-time axis, with the exact survival of every sample.

The calendar-axis contract (docs/design.md): a sample is (subject, prediction time); its input is
every record at or before the prediction time; its outcome is the first ``MEDS_DEATH`` after it,
censored at the subject's last record. This generator writes such a cohort and its truth:

* Each subject has ``MEDS_BIRTH``, a sex code, and a history of visits in calendar time (gaps in
  days, log-normal: heavy-tailed): outpatient visits with a few codes, and admissions
  (``ADMIN//ADMISSION`` ... ``ADMIN//DISCHARGE``) with more. Codes come from the disease patterns
  of :mod:`ehrsurv_dist.data.synth_codes`, a background vocabulary of a few hundred diagnoses,
  drugs, labs and procedures, and :data:`RISK_CODES` (acute events).
* The prediction time is the discharge of the subject's last admission before follow-up, after at
  least ``min_history_days`` of history; one sample per subject, listed in
  ``labels/<task>.parquet`` (``meds.LabelSchema``).
* Death after the prediction time ``pt`` is ``T = pt + Exp(rate)`` days with
  ``rate = exp(η) · Z``: ``η`` (:func:`log_rate_of_rows`) depends on the records at or before
  ``pt`` only — a recency-weighted count of risk codes (weight ``exp(−Δdays / τ)``), the severe
  chronic diseases diagnosed, age at ``pt``, and an age × recency interaction — and ``Z`` is an
  unobservable log-normal frailty with mean 1. Follow-up visits (whose codes do not change the
  rate) run until min(T, end of follow-up); the end of follow-up is an administrative censoring
  at ``pt`` + Uniform(``followup_days``). A death before it is a ``MEDS_DEATH`` row at ``T`` and
  the subject's last record; a censored subject's last record is a visit at its end of follow-up.
* ``truth.parquet`` gives per sample ``rate`` (frailty included) and ``rate_observable`` (frailty
  at its mean, 1: the fair ceiling); :func:`oracle_survival` turns them into exact ``S(e_j)``.

Randomness: block ``b`` of :data:`BLOCK` subjects draws its history (and the frailty) from
``default_rng([seed, STREAM, b])`` and everything after the prediction time from a second
generator, so the output of a seed does not depend on the shard count, and the follow-up draws
can be changed (``followup_salt``) without touching a history or a rate.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.config import PRESETS
from ehrsurv_dist.constants import DAY_US, US_PER_YEAR
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.synth_block import (
    STUDY_START,
    US_PER_MINUTE,
    HazardParams,
    draw_diseases,
)
from ehrsurv_dist.data.synth_codes import (
    CODE_KIND,
    CODE_NAMES,
    DISEASE_INDEX,
    DX,
    DX_TAB,
    KIND_DESCRIPTION,
    MON,
    MON_TAB,
    N_DX,
    N_MON,
    N_TX,
    ROUT,
    SEX_CODES,
    TX,
    TX_TAB,
)
from ehrsurv_dist.data.synthetic import (
    BLOCK,
    ShardRouter,
    SynthResult,
    code_descriptions,
    meds_rows_table,
    write_metadata,
)
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.ragged import offsets_of

__all__ = [
    "ADMISSION_CODE",
    "DISCHARGE_CODE",
    "LABELS_DIR",
    "RISK_CODES",
    "TRUTH_DEATH_DAYS",
    "TRUTH_FOLLOWUP_DAYS",
    "TRUTH_RATE",
    "TRUTH_RATE_OBSERVABLE",
    "CalendarBlock",
    "CalendarParams",
    "calendar_summary",
    "generate_calendar_block",
    "log_rate_of_rows",
    "observable_rate",
    "oracle_survival",
    "synthesize_calendar",
]

STREAM = 0xCA1  # second word of the seed sequence: calendar draws never share the visit axis's
LABELS_DIR = "labels"
ADMISSION_CODE = "ADMIN//ADMISSION"
DISCHARGE_CODE = "ADMIN//DISCHARGE"

# truth.parquet columns (besides subject_id and prediction_time)
TRUTH_RATE = "rate"  # float64 per day, frailty included
TRUTH_RATE_OBSERVABLE = "rate_observable"  # float64 per day, frailty at its mean (1)
TRUTH_DEATH_DAYS = "death_days"  # float64: the drawn T − pt in days (observed or not)
TRUTH_FOLLOWUP_DAYS = "followup_days"  # float64: end of follow-up − pt in days

# (code, description, weight in the recency-weighted risk count)
RISK_CODES: tuple[tuple[str, str, float], ...] = (
    ("ICD10CM/I50.21", "acute systolic heart failure", 1.0),
    ("ICD10CM/J44.1", "COPD with acute exacerbation", 0.8),
    ("ICD10CM/N17.9", "acute kidney failure", 0.9),
    ("ICD10CM/A41.9", "sepsis, unspecified organism", 1.2),
    ("ICD10CM/E87.1", "hypo-osmolality and hyponatremia", 0.5),
    ("ICD10CM/R57.0", "cardiogenic shock", 1.5),
)
# severe chronic diseases: a diagnosis code of one before pt raises the rate
SEVERE = np.array([DISEASE_INDEX[d] for d in ("heart_failure", "ckd", "copd")])


def _background_vocabulary() -> tuple[list[str], np.ndarray]:
    """Background codes (320: diagnoses, drugs, labs, procedures) and their kinds [320]."""
    chapters = "ABCDEFGHJKLMNOPQRSTZ"
    names = [f"ICD10CM/{chapters[j % 20]}{10 + j // 20:02d}" for j in range(160)]
    kinds = [DX] * 160
    names += [f"RX/{20000 + 37 * j}" for j in range(100)]
    kinds += [TX] * 100
    names += [f"LOINC/{1000 + 13 * j}-{j % 10}" for j in range(40)]
    kinds += [MON] * 40
    names += [f"CPT/{99200 + j}" for j in range(20)]
    kinds += [ROUT] * 20
    return names, np.array(kinds, np.int64)


_BG_NAMES, _BG_KIND = _background_vocabulary()
# the calendar vocabulary: visit-axis codes, background, risk, admin; then sex, birth, death
N_VIS = len(CODE_NAMES)
BG0 = N_VIS
RISK0 = BG0 + len(_BG_NAMES)
ADM = RISK0 + len(RISK_CODES)
DIS = ADM + 1
SEX0 = DIS + 1
BIRTH = SEX0 + len(SEX_CODES)
DEATH = BIRTH + 1
CAL_NAMES: list[str] = [
    *CODE_NAMES,
    *_BG_NAMES,
    *(c for c, _, _ in RISK_CODES),
    ADMISSION_CODE,
    DISCHARGE_CODE,
    *SEX_CODES,
    S.BIRTH_CODE,
    S.DEATH_CODE,
]
CAL_KIND = np.concatenate([CODE_KIND, _BG_KIND, np.full(len(CAL_NAMES) - RISK0, -1)])
# Zipf popularity of the background codes, in a fixed shuffled order
_BG_P = 1.0 / (np.random.default_rng(0).permutation(len(_BG_NAMES)) + 3.0)
_BG_CDF = np.cumsum(_BG_P / _BG_P.sum())
# per vocabulary code: its weight in the risk count, and its severe disease (-1 = none)
RISK_WEIGHT = np.zeros(len(CAL_NAMES))
RISK_WEIGHT[RISK0 : RISK0 + len(RISK_CODES)] = [w for _, _, w in RISK_CODES]
SEVERE_OF_CODE = np.full(len(CAL_NAMES), -1, np.int64)
for _k, _d in enumerate(SEVERE):
    _dx = DX_TAB[_d]
    SEVERE_OF_CODE[_dx[_dx >= 0]] = _k


@dataclass(frozen=True)
class CalendarParams:
    """The rate process: ``η = alpha + signal · (β_age·a + β_chronic·c + β_recent·r +
    β_interaction·a·r)`` with ``a = (age at pt − 65) / 10``, ``c`` = severe chronic diseases
    diagnosed before pt, ``r = log(1 + Σ w_code · exp(−Δdays / tau_days))`` over risk codes."""

    alpha: float = -8.4  # log rate per day of a 65-year-old without risk codes
    beta_age: float = 0.45
    beta_chronic: float = 0.3
    beta_recent: float = 1.4
    beta_interaction: float = 0.45
    tau_days: float = 45.0
    signal: float = 1.0
    frailty_sd: float = 0.5  # SD of log Z; Z is log-normal with mean 1
    min_history_days: int = 180
    followup_days: tuple[float, float] = (180.0, 2555.0)  # end of follow-up − pt, uniform
    horizon_days: float = 730.0  # boolean_value of the label file: death within it

    def __post_init__(self) -> None:
        lo, hi = self.followup_days
        if not 0 < lo <= hi:
            raise ValueError(f"followup_days must be 0 < lo <= hi, got {self.followup_days}")
        if self.tau_days <= 0 or self.horizon_days <= 0 or self.frailty_sd < 0:
            raise ValueError("tau_days and horizon_days must be > 0, frailty_sd >= 0")
        if self.signal <= 0 or self.min_history_days < 0:
            raise ValueError("signal must be > 0 and min_history_days >= 0")


@dataclass
class CalendarBlock:
    """One generated block: rows sorted by subject, then time (static rows first), then order."""

    subject_id: np.ndarray  # int64 [n]
    birth_us: np.ndarray  # int64 [n]
    prediction_us: np.ndarray  # int64 [n] the prediction time (an index discharge)
    end_us: np.ndarray  # int64 [n] death time or end of follow-up: the last record
    died: np.ndarray  # bool [n] death observed (before the end of follow-up)
    death_days: np.ndarray  # float64 [n] drawn T − pt (observed or not)
    followup_days: np.ndarray  # float64 [n] end of follow-up − pt
    rate: np.ndarray  # float64 [n] per day, frailty included
    rate_observable: np.ndarray  # float64 [n] frailty at its mean
    n_pre: np.ndarray  # int64 [n] records (not static, not birth) at or before pt
    row_subject: np.ndarray  # int64 [R]
    row_time_us: np.ndarray  # int64 [R]
    row_null_time: np.ndarray  # bool [R]
    row_code: np.ndarray  # int64 [R] index into CAL_NAMES
    row_value: np.ndarray  # float32 [R] NaN = null


@dataclass
class Outcome:
    """What follows the prediction time, drawn from the block's second generator ([n] each)."""

    rate: np.ndarray  # float64 per day, frailty included
    rate_observable: np.ndarray  # float64, frailty at its mean
    death_days: np.ndarray  # float64 drawn T − pt (observed or not)
    followup_days: np.ndarray  # float64 end of follow-up − pt
    died: np.ndarray  # bool: death before the end of follow-up
    end_us: np.ndarray  # int64 death time or end of follow-up (>= pt + 2 µs)


def draw_outcome(
    post: np.random.Generator,
    eta: np.ndarray,
    log_z: np.ndarray,
    pt: np.ndarray,
    followup_days: tuple[float, float],
) -> Outcome:
    """Death at an exponential time of rate ``exp(eta + log_z)`` per day after ``pt``, censored
    at a uniform end of follow-up in ``followup_days``."""
    rate_obs = np.exp(eta)
    rate = rate_obs * np.exp(log_z)
    n = len(pt)
    death_days = post.exponential(1.0, n) / rate
    fu_days = post.uniform(followup_days[0], followup_days[1], n)
    died = death_days <= fu_days
    end_us = pt + np.maximum(np.rint(np.where(died, death_days, fu_days) * DAY_US), 2).astype(
        np.int64
    )
    return Outcome(rate, rate_obs, death_days, fu_days, died, end_us)


def followup_visit_times(
    post: np.random.Generator,
    o: Outcome,
    pt: np.ndarray,
    intensity: np.ndarray,
    mean_gap_days: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(subject, time in µs) of the visits in (pt, end]: Poisson, ``intensity`` per
    ``mean_gap_days``; a censored subject's last visit is at its end of follow-up."""
    span = o.end_us - pt  # >= 2 µs
    n_fu = post.poisson(intensity * (span / DAY_US) / mean_gap_days)
    fs = np.repeat(np.arange(len(pt)), n_fu)
    f_us = pt[fs] + 1 + (post.random(len(fs)) * (span[fs] - 1)).astype(np.int64)  # (pt, end)
    cen = np.flatnonzero(~o.died)
    return np.concatenate([fs, cen]), np.concatenate([f_us, o.end_us[cen]])


def calendar_block(
    sid: np.ndarray,
    birth_us: np.ndarray,
    pt: np.ndarray,
    o: Outcome,
    n_pre: np.ndarray,
    rows: dict[str, np.ndarray],
) -> CalendarBlock:
    """The block of subjects ``sid`` from their outcome and their rows (:func:`block_rows`)."""
    return CalendarBlock(
        subject_id=sid,
        birth_us=birth_us,
        prediction_us=pt,
        end_us=o.end_us,
        died=o.died,
        death_days=o.death_days,
        followup_days=o.followup_days,
        rate=o.rate,
        rate_observable=o.rate_observable,
        n_pre=n_pre,
        **rows,
    )


@dataclass
class _Rows:
    """Rows under construction: [R] each."""

    subj: np.ndarray  # block-local subject
    t: np.ndarray  # µs
    order: np.ndarray  # order of appearance within a timestamp
    code: np.ndarray

    @staticmethod
    def cat(parts: list[_Rows]) -> _Rows:
        return _Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ROW_FIELDS))


_ROW_FIELDS = ("subj", "t", "order", "code")


def _generic_codes(rng: np.random.Generator, subj: np.ndarray, has: np.ndarray) -> np.ndarray:
    """A code for each row [R]: half from the subject's diseases (dx / tx / mon), else background."""
    r = len(subj)
    u = rng.random((r, 4))
    nh = has.sum(axis=1)[subj]
    use_dis = (nh > 0) & (u[:, 0] < 0.5)
    k = (u[:, 1] * nh).astype(np.int64)
    cum = np.cumsum(has[subj], axis=1, dtype=np.int16)  # [R, N_DIS]
    dis = np.argmax(cum > k[:, None], axis=1)
    kind = np.where(u[:, 2] < 0.45, DX, np.where(u[:, 2] < 0.8, TX, MON))
    dx = DX_TAB[dis, (u[:, 3] * N_DX[dis]).astype(np.int64)]
    tx = TX_TAB[dis, (u[:, 3] * N_TX[dis]).astype(np.int64)]
    mon = MON_TAB[dis, (u[:, 3] * N_MON[dis]).astype(np.int64)]
    dis_code = np.where(kind == DX, dx, np.where(kind == TX, tx, mon))
    bg = BG0 + np.minimum(np.searchsorted(_BG_CDF, u[:, 3]), len(_BG_NAMES) - 1)
    return np.where(use_dis, dis_code, bg)


def _risk_codes(rng: np.random.Generator, subj: np.ndarray, has: np.ndarray) -> np.ndarray:
    """A risk code for each row [R], likelier where it matches the subject's diseases."""
    w = np.ones((len(has), len(RISK_CODES)))
    w[:, 0] += 3.0 * has[:, DISEASE_INDEX["heart_failure"]]
    w[:, 5] += 1.0 * has[:, DISEASE_INDEX["heart_failure"]]
    w[:, 1] += 3.0 * has[:, DISEASE_INDEX["copd"]]
    w[:, 2] += 3.0 * has[:, DISEASE_INDEX["ckd"]]
    cdf = np.cumsum(w, axis=1)[subj]
    u = rng.random(len(subj)) * cdf[:, -1]
    return RISK0 + np.argmax(cdf > u[:, None], axis=1)


def _repeat_rows(counts: np.ndarray, subj: np.ndarray, t: np.ndarray, order0: int) -> _Rows:
    """``counts[i]`` rows at moment i (subject ``subj[i]``, time ``t[i]``), codes to be filled."""
    idx = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(len(idx)) - offsets_of(counts)[:-1][idx]
    return _Rows(subj[idx], t[idx], order0 + pos, np.zeros(len(idx), np.int64))


def _seg_cumsum(x: np.ndarray, start: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Cumulative sum restarted at each segment (``start`` [n], ``seg`` [m] its segment)."""
    c = np.cumsum(x)
    return c - (c[start] - x[start])[seg]


def log_rate_of_rows(
    sample: np.ndarray,
    dt_days: np.ndarray,
    code: np.ndarray,
    age_years: np.ndarray,
    params: CalendarParams,
) -> np.ndarray:
    """η of each sample from its records at or before the prediction time.

    Args:
        sample: int [R] sample (0..N-1) of each record; only records with ``dt_days >= 0``.
        dt_days: float [R] prediction time − record time, in days (>= 0).
        code: int [R] index into the calendar vocabulary (``CAL_NAMES``).
        age_years: float [N] age at the prediction time.
        params: the rate process.

    Returns:
        float64 [N]: log rate per day with the frailty at its mean.
    """
    n = len(age_years)
    if np.any(dt_days < 0):
        raise ValueError("log_rate_of_rows takes records at or before the prediction time only")
    w = RISK_WEIGHT[code] * np.exp(-dt_days / params.tau_days)
    x_rec = np.log1p(np.bincount(sample, weights=w, minlength=n))
    sev = SEVERE_OF_CODE[code]
    seen = np.zeros((n, len(SEVERE)), bool)
    seen[sample[sev >= 0], sev[sev >= 0]] = True
    x_chr = seen.sum(axis=1)
    x_age = (np.asarray(age_years, np.float64) - 65.0) / 10.0
    p = params
    return p.alpha + p.signal * (
        p.beta_age * x_age
        + p.beta_chronic * x_chr
        + p.beta_recent * x_rec
        + p.beta_interaction * x_age * x_rec
    )


def block_rows(
    sid: np.ndarray,
    sex_code: np.ndarray,
    birth_code: int,
    birth_us: np.ndarray,
    subj: np.ndarray,
    t: np.ndarray,
    order: np.ndarray,
    code: np.ndarray,
    value: np.ndarray,
) -> dict[str, np.ndarray]:
    """A block's ``row_*`` fields: each subject's static sex row (``sex_code`` [n]) and birth
    row, then the records (``subj``: positions in ``sid``, time, order within a time, code,
    float32 value), sorted by subject, then static rows, the birth, the records by time and
    order."""
    n = len(sid)
    ar = np.arange(n)
    s = np.concatenate([ar, ar, subj])
    tt = np.concatenate([np.zeros(n, np.int64), birth_us, t])
    group = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64), np.full(len(t), 2)])
    o = np.concatenate([np.zeros(2 * n, np.int64), order])
    c = np.concatenate([sex_code, np.full(n, birth_code), code])
    v = np.concatenate([np.full(2 * n, np.nan, np.float32), value])
    srt = np.lexsort((o, tt, group, s))
    return {
        "row_subject": sid[s[srt]],
        "row_time_us": tt[srt],
        "row_null_time": group[srt] == 0,
        "row_code": c[srt],
        "row_value": v[srt],
    }


def generate_calendar_block(
    block: int,
    n: int,
    first_id: int,
    seed: int,
    params: CalendarParams | None = None,
    followup_salt: int = 0,
) -> CalendarBlock:
    """Generate ``n`` subjects with ids ``first_id..first_id+n-1`` (see the module docstring).

    ``followup_salt`` changes only the draws after the prediction time (death, end of follow-up,
    follow-up visits): histories, prediction times and rates stay the same.
    """
    p = params or CalendarParams()
    rng = np.random.default_rng([seed, STREAM, block])
    post = np.random.default_rng([seed, STREAM, block, 1, followup_salt])
    sid = np.arange(first_id, first_id + n, dtype=np.int64)

    # subjects
    base_age = rng.uniform(35.0, 85.0, n)  # at the first visit
    first_us = STUDY_START + rng.integers(0, 5 * 365, n) * DAY_US
    birth_us = first_us - (base_age * US_PER_YEAR).astype(np.int64)
    sex = rng.integers(0, 2, n)
    log_z = rng.normal(0.0, p.frailty_sd, n) - p.frailty_sd**2 / 2  # E[Z] = 1
    intensity = rng.gamma(3.0, 1.0 / 3.0, n)  # visit frequency, mean 1
    has = draw_diseases(rng, base_age, HazardParams(enrichment=2.0))  # [n, N_DIS]
    sev = has[:, SEVERE].sum(axis=1)

    # visits before pt; the last one is the index admission whose discharge is pt
    n_pre = 8 + rng.poisson(10.0 * intensity + 2.0 * has.sum(axis=1))
    m = int(n_pre.sum())
    vs = np.repeat(np.arange(n), n_pre)
    start = offsets_of(n_pre)[:-1]
    local = np.arange(m) - start[vs]
    last = start + n_pre - 1
    adm = rng.random(m) < (0.05 + 0.03 * sev)[vs]
    adm[last] = True
    los = np.where(adm, np.minimum(rng.geometric(0.3, m), 30), 0)
    gap = np.minimum(np.rint(rng.lognormal(np.log(20.0), 1.2, m) / intensity[vs]), 1500) + 1
    gap[1:] += los[:-1]  # the next visit comes after a stay
    gap[start] = 0
    day = _seg_cumsum(gap.astype(np.int64), start, vs)
    deficit = np.maximum(0, p.min_history_days - (day[last] + los[last]))
    day += np.where(local > 0, deficit[vs], 0)
    acute = adm & (rng.random(m) < (0.25 + 0.12 * sev)[vs])
    minute = np.where(adm, rng.integers(0, 24 * 60, m), rng.integers(8 * 60, 18 * 60, m))
    v_us = first_us[vs] + day * DAY_US + minute * US_PER_MINUTE
    d_us = first_us[vs] + (day + los) * DAY_US + rng.integers(9 * 60, 17 * 60, m) * US_PER_MINUTE
    pt = d_us[last]

    # records before pt: visit codes, risk codes, admission / discharge codes
    k_gen = np.where(adm, 4 + rng.poisson(3.0, m), 1 + rng.poisson(2.0, m))
    gen = _repeat_rows(k_gen, vs, v_us, 1)
    p_out_risk = (0.04 + 0.04 * sev)[vs]
    k_risk = np.where(acute, 1 + (rng.random(m) < 0.5), rng.random(m) < p_out_risk)
    risk = _repeat_rows(k_risk.astype(np.int64), vs, v_us, 100)
    a = np.flatnonzero(adm)
    dgen = _repeat_rows(rng.poisson(1.0, len(a)), vs[a], d_us[a], 1)
    drisk = _repeat_rows(
        (acute[a] & (rng.random(len(a)) < 0.4)).astype(np.int64), vs[a], d_us[a], 100
    )
    gen.code = _generic_codes(rng, gen.subj, has)
    dgen.code = _generic_codes(rng, dgen.subj, has)
    risk.code = _risk_codes(rng, risk.subj, has)
    drisk.code = _risk_codes(rng, drisk.subj, has)
    admin = _Rows(
        np.concatenate([vs[a], vs[a]]),
        np.concatenate([v_us[a], d_us[a]]),
        np.concatenate([np.zeros(len(a), np.int64), np.full(len(a), 1000)]),
        np.concatenate([np.full(len(a), ADM), np.full(len(a), DIS)]),
    )
    pre = _Rows.cat([gen, risk, dgen, drisk, admin])
    pre_value = _lab_values(rng, pre.code)

    # the rate: records at or before pt only (all of `pre`), age at pt, frailty
    age_pt = (pt - birth_us) / US_PER_YEAR
    eta = log_rate_of_rows(pre.subj, (pt[pre.subj] - pre.t) / DAY_US, pre.code, age_pt, p)

    # after pt (second generator): death, end of follow-up, follow-up visits
    o = draw_outcome(post, eta, log_z, pt, p.followup_days)
    fs, f_us = followup_visit_times(post, o, pt, intensity, 60.0)
    k_fu = 1 + post.poisson(2.0, len(fs))
    fgen = _repeat_rows(k_fu, fs, f_us, 1)
    fgen.code = _generic_codes(post, fgen.subj, has)
    fk = (post.random(len(fs)) < p_out_risk[start[fs]]).astype(np.int64)
    frisk = _repeat_rows(fk, fs, f_us, 100)
    frisk.code = _risk_codes(post, frisk.subj, has)
    dead = np.flatnonzero(o.died)
    death = _Rows(dead, o.end_us[dead], np.zeros(len(dead), np.int64), np.full(len(dead), DEATH))
    after = _Rows.cat([fgen, frisk, death])
    after_value = _lab_values(post, after.code)

    # assemble: static sex, birth, then records by time and order of appearance
    rows = _Rows.cat([pre, after])
    value = np.concatenate([pre_value, after_value])
    return calendar_block(
        sid,
        birth_us,
        pt,
        o,
        np.bincount(pre.subj, minlength=n).astype(np.int64),
        block_rows(
            sid, SEX0 + sex, BIRTH, birth_us, rows.subj, rows.t, rows.order, rows.code, value
        ),
    )


def _lab_values(rng: np.random.Generator, code: np.ndarray) -> np.ndarray:
    """float32 [R]: a numeric value for lab (monitoring) codes, NaN elsewhere."""
    v = np.full(len(code), np.nan, np.float32)
    lab = CAL_KIND[code] == MON
    v[lab] = rng.normal(100.0, 15.0, int(lab.sum())).astype(np.float32)
    return v


def truth_for_samples(
    truth: pa.Table, subject_id: np.ndarray, prediction_time_us: np.ndarray
) -> pa.Table | None:
    """The truth rows of the given samples (subject, prediction time µs), in their order; None
    when some sample has no truth row (e.g. another rule's samples)."""
    keys = [S.SUBJECT_ID, S.PREDICTION_TIME]
    want = pa.table(
        {
            S.SUBJECT_ID: pa.array(subject_id, pa.int64()),
            S.PREDICTION_TIME: pa.array(prediction_time_us, pa.int64()),
            "__row": pa.array(np.arange(len(subject_id)), pa.int64()),
        }
    )
    have = truth.set_column(
        truth.schema.get_field_index(S.PREDICTION_TIME),
        S.PREDICTION_TIME,
        truth[S.PREDICTION_TIME].cast(pa.timestamp("us")).cast(pa.int64()),
    )
    rows = want.join(have, keys, join_type="inner").sort_by("__row")
    return rows if rows.num_rows == len(subject_id) else None


def oracle_survival(truth: pa.Table, edges_days: np.ndarray, observable: bool = True) -> np.ndarray:
    """Exact survival of every sample at the bin edges: ``S(e_j) = exp(−rate · e_j)``.

    Args:
        truth: ``truth.parquet`` (``rate``, ``rate_observable``), N rows.
        edges_days: float [K + 1] increasing edges ``e_0 = 0 < e_1 < … < e_K``, days after pt.
        observable: True = ``rate_observable`` (frailty at its mean: the fair ceiling),
            False = ``rate`` (frailty included).

    Returns:
        float64 [N, K]: ``S(e_1) … S(e_K)``, rows in the truth table's order.
    """
    e = np.asarray(edges_days, np.float64)
    if e.ndim != 1 or len(e) < 2 or e[0] != 0 or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges_days must be increasing from 0 with >= 2 values, got {e}")
    col = TRUTH_RATE_OBSERVABLE if observable else TRUTH_RATE
    rate = np.asarray(truth[col].to_numpy(), np.float64)
    return np.exp(-rate[:, None] * e[None, 1:])


def rows_as_of(
    data: pa.Table,
    samples: pa.Table,
    names: list[str],
    birth: int,
    first_static: int,
    who: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A generator's view of MEDS records, to recompute each sample's rate from the files.

    Args:
        data: MEDS rows of the samples' subjects (any order).
        samples: ``subject_id``, ``prediction_time`` [N]; one sample per subject.
        names: the generator's code names (index = its code id).
        birth: the id of ``MEDS_BIRTH`` in ``names``.
        first_static: ids from here on (sex, birth, death) are no rate input.
        who: the caller's name, for the error messages.

    Returns:
        ``use`` bool [R] (rows that are rate inputs: a sample's subject, timed, a generator code
        below ``first_static``, at or before the prediction time), ``sample`` int64 [R] (each
        row's sample), ``code`` int64 [R] (id in ``names``, -1 unknown), ``age`` float64 [N]
        (years at the prediction time) and ``dt`` float64 [use.sum()] (days before it).
    """
    ssid = np.asarray(samples[S.SUBJECT_ID].to_numpy(), np.int64)
    if len(np.unique(ssid)) != len(ssid):
        raise ValueError(f"{who} takes one sample per subject")
    spt, _ = time_us(samples[S.PREDICTION_TIME])
    order = np.argsort(ssid)
    rsid = np.asarray(data[S.SUBJECT_ID].to_numpy(), np.int64)
    pos = np.minimum(np.searchsorted(ssid[order], rsid), len(ssid) - 1)
    known = ssid[order][pos] == rsid
    sample = order[pos]
    t, tnull = time_us(data[S.TIME])
    col = data[S.CODE]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(arr.cast(pa.string()))
    dic = enc.dictionary.to_pylist()
    ids = {c: i for i, c in enumerate(names)}
    lut = np.array([ids.get(c, -1) for c in dic] + [-1], np.int64)
    code = lut[np.asarray(enc.indices.fill_null(len(dic)).to_numpy(), np.int64)]
    born = np.full(len(ssid), np.iinfo(np.int64).min)
    is_b = known & ~tnull & (code == birth)
    born[sample[is_b]] = t[is_b]
    if np.any(born == np.iinfo(np.int64).min):
        raise ValueError("every sample's subject needs a MEDS_BIRTH row")
    use = known & ~tnull & (code >= 0) & (code < first_static) & (t <= spt[sample])
    age = (spt - born) / US_PER_YEAR
    dt = (spt[sample[use]] - t[use]) / DAY_US
    return use, sample, code, age, dt


def observable_rate(
    data: pa.Table, samples: pa.Table, params: CalendarParams | None = None
) -> np.ndarray:
    """The rate with the frailty at its mean, recomputed from MEDS records alone.

    Args:
        data: MEDS rows (``subject_id``, ``time``, ``code``) of the samples' subjects, any order;
            records after a sample's prediction time are ignored.
        samples: ``subject_id``, ``prediction_time`` [N]; one sample per subject.
        params: the rate process the cohort was generated with.

    Returns:
        float64 [N] rate per day.
    """
    p = params or CalendarParams()
    use, sample, code, age, dt = rows_as_of(
        data, samples, CAL_NAMES, BIRTH, SEX0, "observable_rate"
    )
    return np.exp(log_rate_of_rows(sample[use], dt, code[use], age, p))


def _codes_metadata() -> tuple[list[str], list[str]]:
    """codes.parquet of a calendar cohort: every code but MEDS_BIRTH / MEDS_DEATH."""
    vis_names, vis_desc = code_descriptions()
    names = [*CODE_NAMES, *_BG_NAMES, *(c for c, _, _ in RISK_CODES)]
    descs = [*vis_desc[: len(CODE_NAMES)]]
    descs += [
        f"{KIND_DESCRIPTION[int(k)]} code {c} (background)"
        for c, k in zip(_BG_NAMES, _BG_KIND, strict=True)
    ]
    descs += [f"acute event: {d}" for _, d, _ in RISK_CODES]
    names += [ADMISSION_CODE, DISCHARGE_CODE, *vis_names[len(CODE_NAMES) :]]
    descs += ["hospital admission", "hospital discharge", *vis_desc[len(CODE_NAMES) :]]
    return names, descs


_TS = pa.timestamp("us")


def rows_table(names: list[str], b: CalendarBlock, first_id: int, lo: int, hi: int) -> pa.Table:
    """The MEDS rows of the block's subjects at cohort positions ``[lo, hi)`` (ids start at
    ``first_id``; rows are sorted by subject), codes named by ``names``."""
    r0, r1 = np.searchsorted(b.row_subject, first_id + np.array([lo, hi]))
    sl = slice(int(r0), int(r1))
    return meds_rows_table(
        b.row_subject[sl],
        b.row_time_us[sl],
        b.row_null_time[sl],
        b.row_code[sl],
        b.row_value[sl],
        names,
    )


def _sample_tables(b: CalendarBlock, horizon_days: float) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(label rows, truth rows, outcome rows) of one block."""
    pt = pa.array(b.prediction_us, pa.int64()).cast(_TS)
    sid = pa.array(b.subject_id)
    labels = pa.table(
        {
            S.SUBJECT_ID: sid,
            S.PREDICTION_TIME: pt,
            "boolean_value": pa.array(b.died & (b.death_days <= horizon_days)),
        }
    )
    truth = pa.table(
        {
            S.SUBJECT_ID: sid,
            S.PREDICTION_TIME: pt,
            TRUTH_RATE: pa.array(b.rate),
            TRUTH_RATE_OBSERVABLE: pa.array(b.rate_observable),
            TRUTH_DEATH_DAYS: pa.array(b.death_days),
            TRUTH_FOLLOWUP_DAYS: pa.array(b.followup_days),
        }
    )
    outcomes = pa.table(
        {
            S.SUBJECT_ID: sid,
            S.OUTCOME_EVENT: pa.array(b.died),
            S.OUTCOME_TIME: pa.array(b.end_us, pa.int64()).cast(_TS),
        }
    )
    return labels, truth, outcomes


FIRST_ID = 10_001  # the first subject id of a calendar cohort


def prepare_out(out: str, task: str) -> None:
    """Check the task name and that ``out`` holds no file, then make its folders."""
    if not task or os.sep in task or task.startswith("."):
        raise ValueError(f"task must be a plain file name, got {task!r}")
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"output directory {out} is not empty; choose a new --out")
    for d in (S.DATA_SUBDIR, "metadata", LABELS_DIR):
        os.makedirs(os.path.join(out, d), exist_ok=True)


def write_blocks(
    out: str,
    blocks: Iterable[tuple[int, int, CalendarBlock]],
    n_total: int,
    k_shards: int,
    horizon_days: float,
    task: str,
    names: list[str],
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Write the ``(lo, hi, block)`` blocks (cohort positions, in order) of a calendar cohort:
    the data shards, then ``labels/<task>.parquet``, ``outcomes.parquet`` and ``truth.parquet``.

    Returns:
        (the subject ids, in order; the number of data rows written).
    """
    bounds = np.linspace(0, n_total, k_shards + 1).astype(np.int64)
    per_sample: list[tuple[pa.Table, pa.Table, pa.Table]] = []
    with ExitStack() as files:
        router = ShardRouter(files, out, bounds)
        for lo, hi, blk in blocks:
            per_sample.append(_sample_tables(blk, horizon_days))
            router.write(lo, hi, functools.partial(rows_table, names, blk, FIRST_ID))
            if progress is not None:
                progress(hi - lo)
        router.close()
    labels, truth, outcomes = (pa.concat_tables([s[i] for s in per_sample]) for i in range(3))
    meds.LabelSchema.validate(labels)
    atomic.write_parquet(labels, os.path.join(out, LABELS_DIR, f"{task}.parquet"))
    atomic.write_parquet(outcomes, os.path.join(out, S.OUTCOMES_FILE))
    atomic.write_parquet(truth, os.path.join(out, S.TRUTH_FILE))
    return np.asarray(truth[S.SUBJECT_ID].to_numpy()), router.rows


def synthesize_calendar(
    out: str,
    preset: str = "smoke",
    subjects: int | None = None,
    seed: int = 42,
    shards: int | None = None,
    params: CalendarParams | None = None,
    task: str = "death",
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write a calendar-axis synthetic MEDS cohort to ``out`` (which must not hold files already).

    Layout: ``data/shard_KKKK.parquet``, ``metadata/{codes,subject_splits}.parquet``,
    ``metadata/dataset.json``, ``labels/<task>.parquet`` (``meds.LabelSchema``: one prediction
    time per subject, ``boolean_value`` = death observed within ``params.horizon_days``; False also
    where the subject is censored earlier, as the schema allows no null), ``outcomes.parquet``
    (death, or censoring at the last record) and ``truth.parquet`` (``subject_id``,
    ``prediction_time``, ``rate``, ``rate_observable``, ``death_days``, ``followup_days``).
    Every file is written under a temporary name and renamed when complete. ``preset="long"``
    writes :func:`~ehrsurv_dist.data.synth_long.synthesize_long`'s cohort instead (long lab-heavy
    histories; ``params`` gives its signal, frailty, follow-up and horizon).
    """
    t0 = time.perf_counter()
    p = params or CalendarParams()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "long":  # the long-history generator: its own histories and rate process
        from ehrsurv_dist.data.synth_long import LongParams, synthesize_long

        return synthesize_long(
            out,
            subjects=int(subjects if subjects is not None else PRESETS[preset].subjects),
            seed=seed,
            shards=shards,
            params=LongParams(
                signal=p.signal,
                frailty_sd=p.frailty_sd,
                horizon_days=p.horizon_days,
                followup_days=p.followup_days,
            ),
            task=task,
            progress=progress,
        )
    n_total = int(subjects if subjects is not None else PRESETS[preset].subjects)
    if n_total < 1:
        raise ValueError("subjects must be >= 1")
    k_shards = int(
        shards if shards is not None else max(PRESETS[preset].shards, -(-n_total // 250_000))
    )
    k_shards = max(1, min(k_shards, n_total))
    prepare_out(out, task)

    def blocks() -> Iterator[tuple[int, int, CalendarBlock]]:
        for bi in range(-(-n_total // BLOCK)):
            lo, hi = bi * BLOCK, min((bi + 1) * BLOCK, n_total)
            yield lo, hi, generate_calendar_block(bi, hi - lo, FIRST_ID + lo, seed, p)

    subject_ids, rows = write_blocks(
        out, blocks(), n_total, k_shards, p.horizon_days, task, CAL_NAMES, progress
    )
    write_metadata(
        out,
        subject_ids,
        f"ehrsurv-synth-calendar-{preset}",
        f"seed{seed}-n{n_total}-signal{p.signal:g}-frailty{p.frailty_sd:g}"
        f"-horizon{p.horizon_days:g}",
        codes=_codes_metadata(),
    )
    return SynthResult(out, n_total, k_shards, rows, time.perf_counter() - t0)


def calendar_summary(cohort: str, horizon_days: float, task: str = "death") -> dict[str, Any]:
    """Sizes and outcome shares of a calendar cohort, from its label and truth files, and the
    oracle's held-out scores.

    Keys: ``subjects``, ``horizon_days``, ``died_within_horizon`` (share, label file),
    ``censored_before_horizon`` (share censored, alive, before the horizon),
    ``true_death_within_horizon`` (share of drawn T − pt within the horizon, observed or not),
    ``median_rate_observable`` (per day), and ``oracle_held_out`` (:func:`oracle_report`).
    """
    lab = pq.read_table(os.path.join(cohort, LABELS_DIR, f"{task}.parquet"))
    tr = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    dd = np.asarray(tr[TRUTH_DEATH_DAYS].to_numpy())
    fu = np.asarray(tr[TRUTH_FOLLOWUP_DAYS].to_numpy())
    ev = np.asarray(lab["boolean_value"].to_numpy(zero_copy_only=False), bool)
    return {
        "subjects": float(lab.num_rows),
        "horizon_days": float(horizon_days),
        "died_within_horizon": float(ev.mean()),
        "censored_before_horizon": float(np.mean((fu < horizon_days) & (dd > fu))),
        "true_death_within_horizon": float(np.mean(dd <= horizon_days)),
        "median_rate_observable": float(np.median(tr[TRUTH_RATE_OBSERVABLE].to_numpy())),
        "oracle_held_out": oracle_report(cohort, tr, horizon_days),
    }


def oracle_report(
    cohort: str, truth: pa.Table, horizon_days: float, n_bootstrap: int = 100
) -> dict[str, Any]:
    """The oracle's held-out td-C and IBS on default day bins (0, 30, 90, 180, 365, horizon).

    Labels come from the truth (time = min(death, end of follow-up, horizon), event = death
    first), which is what the task derives from the written records; a run's own bins and
    samples are scored again by ``ehrsurv evaluate`` (``metrics.json``, ``oracle``).
    """
    from ehrsurv_dist.metrics.calendar import calendar_metrics

    dd = np.asarray(truth[TRUTH_DEATH_DAYS].to_numpy(), np.float64)
    fu = np.asarray(truth[TRUTH_FOLLOWUP_DAYS].to_numpy(), np.float64)
    time_days = np.minimum(np.minimum(dd, fu), horizon_days)
    event = (dd <= fu) & (dd <= horizon_days)
    sid = np.asarray(truth[S.SUBJECT_ID].to_numpy(), np.int64)
    sp = pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH))
    split_of = dict(zip(sp[S.SUBJECT_ID].to_pylist(), sp[S.SPLIT].to_pylist(), strict=True))
    split = np.asarray([split_of.get(int(s), "") for s in sid], dtype=object)
    edges = np.array(
        sorted({0.0, *(d for d in (30.0, 90.0, 180.0, 365.0) if d < horizon_days), horizon_days})
    )
    ho, tr_ = split == S.HELD_OUT_SPLIT, split == S.TRAIN_SPLIT
    out: dict[str, Any] = {"edges_days": edges.tolist(), "samples": int(ho.sum())}
    if not bool(ho.any()) or not bool(event[ho].any()):
        return out
    for name, observable in (("observable", True), ("frailty", False)):
        surv = oracle_survival(truth.filter(pa.array(ho)), edges, observable=observable)
        m = calendar_metrics(
            surv,
            edges,
            time_days[ho],
            event[ho],
            sid[ho],
            train_time_days=time_days[tr_],
            train_event=event[tr_],
            horizons_days=(),
            n_bootstrap=n_bootstrap,
            seed=0,
        )
        out[name] = {
            "c_index_td": m["c_index_td"],
            "c_index_td_ci": m["ci"].get("c_index_td"),
            "ibs": m["ibs"],
        }
    return out
