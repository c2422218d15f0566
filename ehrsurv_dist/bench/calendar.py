"""``ehrsurv bench models --axis calendar``: the calendar-axis comparison and its baselines.

Every row runs on one synthetic calendar cohort (``ehrsurv synth --axis calendar``), the same
splits and seed, with ``jobs/finetune_calendar.yaml`` as the base job (plus the bench's
overrides: ``--epochs`` and KEY=VALUE):

- ``oracle`` / ``oracle_frailty``: the generator's exact survival ``exp(−rate · e_j)`` at the
  run's bin edges, with ``rate_observable`` (frailty at its mean: the fair ceiling) and with
  ``rate`` (frailty included: what no model can see);
- ``cox_counts``: a penalised Cox model (scikit-survival ``CoxnetSurvivalAnalysis``, elastic
  net with ``l1_ratio`` 0.1, i.e. mostly ridge, on standardised features; the penalty chosen
  on the tuning split by Harrell's C; Breslow baseline) on per-sample features: ``log1p`` counts of each
  vocabulary code in the input before the prediction time, plus the age at the prediction time;
- ``behrt_scratch`` (the job as is), ``behrt_pretrained`` (joint MLM + NVP pretraining on the
  cohort's train split, then ``finetune.strategy=lora`` from it), ``hierarchical`` and ``lstm``:
  real fine-tuning runs (``run_training`` + ``evaluate_run``), as in the visit-axis bench.

Every row is scored by :func:`ehrsurv_dist.metrics.calendar_metrics` on exactly the held-out
samples of the runs' predictions (``RUN/predictions/predictions.parquet``) at the runs' bin
edges (``RUN/time_axis.json``), with the train split's (time, event) for IPCW, the job's
``eval.horizons_days``, bootstrap resamples and seed. Without any finished run (``--only
cox_counts``) the edges and samples come from the same ingest path the runs use (edges fitted on
the train split's event times exactly as ``run_training`` does).

The Cox features come from the product's own ingest path (:class:`IngestPipeline` with the job's
task, single process, ``blocks()``), so the input is what the models see — with one deliberate
difference: ``data.max_seq_len``, ``max_visits`` and ``max_codes_per_visit`` are lifted, so the
counts cover the **full as-of history** (every record at or before the prediction time), not just
the most recent ``max_seq_len`` tokens the sequence models read. This is the fairer (stronger)
baseline: a count model pays nothing for a long history.

The pretraining of ``behrt_pretrained`` reads whole histories of the train split's subjects
(the visit axis; records after their prediction times included); the tuning and held-out
subjects are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist import task as T
from ehrsurv_dist.bench.table import cell, td_ci_cell
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec

CALENDAR_JOB = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.pardir,
    "jobs",
    "finetune_calendar.yaml",
)
DEFAULT_SUBJECTS = 5000
DEFAULT_SIGNAL = 1.0  # the calendar generator's own default
COX_L1_RATIO = 0.1  # elastic net, mostly ridge
COX_N_ALPHAS = 30  # penalties on the path; one is chosen on the tuning split
FULL_HISTORY = 1_000_000_000  # max_seq_len / max_visits / max_codes_per_visit of the Cox input

BASELINE_ROWS: tuple[tuple[str, str], ...] = (
    ("oracle", "oracle: generator's observable rate (fair ceiling)"),
    ("oracle_frailty", "oracle with frailty: generator's full rate (unreachable)"),
    ("cox_counts", "penalised Cox on log1p code counts + age (full as-of history)"),
)


@dataclass(frozen=True)
class Samples:
    """Calendar samples of one split: keys and outcomes (``[N]`` each)."""

    subject_id: np.ndarray  # int64
    prediction_us: np.ndarray  # int64 µs since the epoch
    time_days: np.ndarray  # float64
    event: np.ndarray  # bool

    def keys(self) -> np.ndarray:
        """[N] structured (subject_id, prediction_us) keys."""
        k = np.empty(len(self.subject_id), dtype=[("s", np.int64), ("t", np.int64)])
        k["s"], k["t"] = self.subject_id, self.prediction_us
        return k


@dataclass(frozen=True)
class Reference:
    """What every baseline is scored against: the bin edges, the held-out samples and the train
    split's (time, event) for IPCW; ``source`` says where they came from."""

    edges: np.ndarray
    held: Samples
    train: Samples
    source: str


def calendar_job(common: Sequence[Any] = ()) -> JobSpec:
    """The base job of the calendar bench with ``common`` overrides (no cohort needed)."""
    return load_config(JobSpec, CALENDAR_JOB, [*common, ("data.cohort", "/unset")])


# --------------------------------------------------------------------------------------------
# Samples and features through the ingest path


@dataclass
class CountFeatures:
    """Per-sample Cox inputs of one split: ``x`` float64 [N, V + 1] (``log1p`` counts of the
    vocabulary's codes, ids ``NUM_SPECIAL_TOKENS…``, then the age at the prediction time) and
    the samples; ``counts`` int64 [N, V] the raw counts."""

    samples: Samples
    counts: np.ndarray
    age: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return np.column_stack([np.log1p(self.counts), self.age]).astype(np.float64)


def count_pipeline(spec: JobSpec, cohort: str) -> Any:
    """The job's calendar ingest (single process) with the history limits lifted, fitted: its
    vocabulary is fitted on the train split exactly as a run's is."""
    from ehrsurv_dist.data.pipeline import IngestPipeline

    data = dataclasses.replace(
        spec.data,
        cohort=cohort,
        max_seq_len=FULL_HISTORY,
        max_visits=FULL_HISTORY,
        max_codes_per_visit=FULL_HISTORY,
    )
    spec = dataclasses.replace(spec, data=data)
    pipe = IngestPipeline(cohort, data, layout="flat", seed=spec.seed, task=T.task_spec(spec))
    pipe.fit(use_ray=False)
    return pipe


def count_features(pipe: Any, split: str) -> CountFeatures:
    """:class:`CountFeatures` of ``split`` from the pipeline's blocks (flat layout)."""
    vocab = pipe.vocab
    n_codes = vocab.size - S.NUM_SPECIAL_TOKENS
    parts = [b for b in pipe.blocks(split) if b.num_rows]
    if not parts:
        z = np.zeros(0)
        return CountFeatures(
            Samples(z.astype(np.int64), z.astype(np.int64), z, z.astype(bool)),
            np.zeros((0, n_codes), np.int64),
            z,
        )
    t = pa.concat_tables(parts)
    codes = t[S.CODES].combine_chunks()
    off = np.asarray(codes.offsets.to_numpy(), np.int64)
    ids = np.asarray(codes.values.to_numpy(), np.int64)[off[0] : off[-1]]
    row = np.repeat(np.arange(t.num_rows), np.diff(off))
    keep = ids >= S.NUM_SPECIAL_TOKENS
    flat = row[keep] * n_codes + (ids[keep] - S.NUM_SPECIAL_TOKENS)
    counts = np.bincount(flat, minlength=t.num_rows * n_codes).reshape(t.num_rows, n_codes)
    samples = Samples(
        np.asarray(t[S.SUBJECT_ID].to_numpy(), np.int64),
        np.asarray(t[S.PREDICTION_TIME].to_numpy(), np.int64),
        np.asarray(t[S.TIME_DAYS].to_numpy(), np.float64),
        np.asarray(t[S.EVENT].to_numpy(zero_copy_only=False), bool),
    )
    age = np.asarray(t[S.PREDICTION_AGE].to_numpy(), np.float64)
    return CountFeatures(samples, counts.astype(np.int64), age)


def align(keys: np.ndarray, target: np.ndarray, what: str) -> np.ndarray:
    """Indices ``i`` with ``keys[i] == target`` elementwise; raises unless both hold exactly
    the same samples."""
    if len(keys) != len(target) or len(np.unique(keys)) != len(keys):
        raise ValueError(
            f"{what}: {len(keys)} samples against {len(target)} held-out samples of the runs"
        )
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], target)
    pos = np.minimum(pos, len(keys) - 1)
    idx = order[pos]
    if not np.array_equal(keys[idx], target):
        missing = int(np.sum(keys[idx] != target))
        raise ValueError(f"{what}: {missing} held-out samples of the runs are not among its own")
    return idx


# --------------------------------------------------------------------------------------------
# The Cox baseline


@dataclass
class CoxFit:
    """A fitted penalised Cox model on standardised count features, at its chosen ``alpha``."""

    model: Any  # sksurv CoxnetSurvivalAnalysis (the whole path, baseline model per alpha)
    columns: np.ndarray  # feature columns kept (non-constant on train)
    mean: np.ndarray
    scale: np.ndarray
    alpha: float
    tuning_c_index: float | None

    @property
    def n_params(self) -> int:
        """Coefficients of the model (one per kept column)."""
        return int(len(self.columns))

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (x[:, self.columns] - self.mean) / self.scale  # type: ignore[no-any-return]

    def risk(self, x: np.ndarray) -> np.ndarray:
        """float64 [N]: the linear predictor ``x β``."""
        return np.asarray(self.model.predict(self._z(x), alpha=self.alpha), np.float64)

    def survival(self, x: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """float64 [N, K]: the model's (Breslow) survival function at ``e_1 … e_K``; a step
        function of the train times, 1 before the first, flat after the last."""
        m = self.model
        s = np.asarray(
            m.predict_survival_function(self._z(x), alpha=self.alpha, return_array=True),
            np.float64,
        )
        i = np.searchsorted(np.asarray(m.unique_times_), np.asarray(edges[1:]), side="right") - 1
        out = np.where(i[None, :] >= 0, s[:, np.maximum(i, 0)], 1.0)
        return np.minimum.accumulate(np.clip(out, 0.0, 1.0), axis=1)  # type: ignore[no-any-return]


def _surv_y(time_days: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time_days.astype(np.float64))


def fit_cox(
    train: CountFeatures,
    tuning: CountFeatures | None = None,
    l1_ratio: float = COX_L1_RATIO,
    n_alphas: int = COX_N_ALPHAS,
) -> CoxFit:
    """``CoxnetSurvivalAnalysis`` (elastic net, mostly ridge) on the train samples'
    standardised features, its whole ``alpha`` path in one fit; ``alpha`` chosen by Harrell's C
    on ``tuning`` (without tuning events: the path's middle)."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored

    x = train.x
    sd = x.std(axis=0)
    cols = np.flatnonzero(sd > 0)
    mean, scale = x[:, cols].mean(axis=0), sd[cols]
    y = _surv_y(train.samples.time_days, train.samples.event)
    m = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, n_alphas=n_alphas, fit_baseline_model=True)
    m.fit((x[:, cols] - mean) / scale, y)
    alphas = [float(a) for a in m.alphas_]
    fit = CoxFit(m, cols, mean, scale, alphas[len(alphas) // 2], None)
    if tuning is None or not tuning.samples.event.any():
        return fit
    best = (-1.0, fit.alpha)
    for a in alphas:
        fit.alpha = a
        risk = fit.risk(tuning.x)
        c = float(
            concordance_index_censored(tuning.samples.event, tuning.samples.time_days, risk)[0]
        )
        best = max(best, (c, a))
    fit.tuning_c_index, fit.alpha = best
    return fit


# --------------------------------------------------------------------------------------------
# Scoring


def score(
    surv: np.ndarray, ref: Reference, spec: JobSpec, n_boot: int, held: Samples | None = None
) -> dict[str, Any]:
    """``calendar_metrics`` of ``surv`` [N, K] on the reference's held-out samples (JSON-ready)."""
    h = held or ref.held
    m = M.calendar_metrics(
        surv,
        ref.edges,
        h.time_days,
        h.event,
        h.subject_id,
        train_time_days=ref.train.time_days,
        train_event=ref.train.event,
        horizons_days=tuple(spec.eval.horizons_days),
        n_bootstrap=n_boot,
        seed=spec.seed,
    )
    return M.jsonable(m)  # type: ignore[no-any-return]


def metrics_entry(m: dict[str, Any]) -> dict[str, Any]:
    """The table columns of one split's calendar metrics."""
    ci = (m.get("ci") or {}).get("c_index_td")
    return {
        "c_index_td": m.get("c_index_td"),
        "c_index_td_ci": list(ci) if ci else None,
        "c_index_harrell": m.get("c_index_harrell"),
        "c_index_uno": m.get("c_index_uno"),
        "ibs": m.get("ibs"),
        "ece": (m.get("calibration") or {}).get("ece"),
        "n_samples": m.get("n_samples"),
        "n_events": m.get("n_events"),
    }


def read_truth(cohort: str) -> pa.Table:
    return pq.read_table(os.path.join(cohort, S.TRUTH_FILE))


def oracle_rows(cohort: str, ref: Reference, spec: JobSpec, n_boot: int) -> list[dict[str, Any]]:
    """``oracle`` (``rate_observable``) and ``oracle_frailty`` (``rate``) on the held-out
    samples, truth joined on (subject_id, prediction_time)."""
    from ehrsurv_dist.data.synth_calendar import oracle_survival, truth_for_samples

    sub = truth_for_samples(read_truth(cohort), ref.held.subject_id, ref.held.prediction_us)
    if sub is None:
        raise ValueError("some held-out samples have no truth row")
    rows = []
    for (name, label), observable in zip(BASELINE_ROWS[:2], (True, False), strict=True):
        t0 = time.perf_counter()
        m = score(oracle_survival(sub, ref.edges, observable=observable), ref, spec, n_boot)
        rows.append(
            {"name": name, "label": label, **metrics_entry(m), "wall_s": time.perf_counter() - t0}
        )
    return rows


def cox_row(pipe: Any, ref: Reference, spec: JobSpec, n_boot: int, t0: float) -> dict[str, Any]:
    """``cox_counts``: fitted on train, penalty chosen on tuning, scored on held-out."""
    train = count_features(pipe, S.TRAIN_SPLIT)
    tuning = count_features(pipe, S.TUNING_SPLIT)
    held = count_features(pipe, S.HELD_OUT_SPLIT)
    fit = fit_cox(train, tuning)
    idx = align(held.samples.keys(), ref.held.keys(), "cox_counts")
    surv = fit.survival(held.x[idx], ref.edges)
    m = score(surv, ref, spec, n_boot)
    return {
        "name": "cox_counts",
        "label": BASELINE_ROWS[2][1],
        **metrics_entry(m),
        "trainable_params": fit.n_params,  # coefficients (kept count columns and the age)
        "cox_alpha": fit.alpha,
        "cox_tuning_c_index_harrell": fit.tuning_c_index,
        "wall_s": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# The reference: from a finished run, else from the ingest path


def _samples_of(t: pa.Table) -> Samples:
    return Samples(
        np.asarray(t[S.SUBJECT_ID].to_numpy(), np.int64),
        np.asarray(t[S.PREDICTION_TIME].cast(pa.int64()).to_numpy(), np.int64),
        np.asarray(t[S.TIME_DAYS].to_numpy(), np.float64),
        np.asarray(t[S.EVENT].to_numpy(zero_copy_only=False), bool),
    )


def run_reference(run: str) -> Reference | None:
    """The edges and the train / held-out samples of a finished calendar run, or None."""
    axis_path = os.path.join(run, rundir.TIME_AXIS)
    pred_path = rundir.path(run, rundir.PREDICTIONS)
    if not (os.path.exists(axis_path) and os.path.exists(pred_path)):
        return None
    with open(axis_path) as f:
        edges = np.asarray(json.load(f)["edges"], np.float64)
    p = pq.read_table(
        pred_path, columns=[S.SUBJECT_ID, S.SPLIT, S.PREDICTION_TIME, S.TIME_DAYS, S.EVENT]
    )
    split = np.asarray(p[S.SPLIT].to_numpy(zero_copy_only=False))
    held = p.filter(pa.array(split == S.HELD_OUT_SPLIT))
    train = p.filter(pa.array(split == S.TRAIN_SPLIT))
    if held.num_rows == 0 or train.num_rows == 0:
        return None
    return Reference(edges, _samples_of(held), _samples_of(train), run)


def pipeline_reference(pipe: Any, spec: JobSpec) -> Reference:
    """The reference from the ingest path alone: edges fitted like ``run_training`` fits them
    (train split's event times), the train and held-out samples of the pipeline."""
    fit = pipe.fitted
    edges = np.asarray(
        T.resolve_edges(spec, fit.event_days.get(S.TRAIN_SPLIT) if fit else None), np.float64
    )
    train = count_features(pipe, S.TRAIN_SPLIT).samples
    held = count_features(pipe, S.HELD_OUT_SPLIT).samples
    return Reference(edges, held, train, "the ingest path (no finished run)")


def _calendar_model_rows() -> list[Any]:
    from ehrsurv_dist.bench.models import Row

    return [
        Row("behrt_scratch", "BEHRT full, from scratch (the job as is)", ()),
        Row(
            "behrt_pretrained",
            "BEHRT LoRA, pretrained (MLM + NVP)",
            ("finetune.strategy=lora",),
            True,
        ),
        Row("hierarchical", "hierarchical BEHRT full, from scratch", ("model.arch=hierarchical",)),
        Row("lstm", "LSTM baseline", ("model.arch=lstm",)),
    ]


def calendar_row_names() -> list[str]:
    """Every row of ``--axis calendar``, in table order."""
    return [n for n, _ in BASELINE_ROWS] + [r.name for r in _calendar_model_rows()]


def calendar_model_rows() -> list[Any]:
    """The fine-tuning rows (``models.Row``) of ``--axis calendar``."""
    return _calendar_model_rows()


def run_baselines(
    names: Sequence[str],
    cohort: str,
    out: str,
    spec: JobSpec,
    runs: Sequence[str],
    n_boot: int,
    note: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The baseline rows in ``names`` (oracle, oracle_frailty, cox_counts), scored against the
    first finished run of ``runs`` (else the ingest path); cached in ``OUT/baselines.json``."""
    wanted = [n for n, _ in BASELINE_ROWS if n in names]
    if not wanted:
        return []
    ref = next((r for r in map(run_reference, runs) if r is not None), None)
    pipe = None
    t0 = time.perf_counter()
    if ref is None or "cox_counts" in wanted:
        note("calendar baselines: reading the cohort through the ingest path (full history)")
        pipe = count_pipeline(spec, cohort)
    if ref is None:
        ref = pipeline_reference(pipe, spec)
    note(
        f"calendar baselines scored on {len(ref.held.subject_id)} held-out samples of {ref.source}"
    )
    rows: list[dict[str, Any]] = []
    if {"oracle", "oracle_frailty"} & set(wanted):
        rows += [r for r in oracle_rows(cohort, ref, spec, n_boot) if r["name"] in wanted]
    if "cox_counts" in wanted:
        note("cox_counts: penalised Cox on log1p code counts + age")
        rows.append(cox_row(pipe, ref, spec, n_boot, t0))
    for r in rows:
        r["reference"] = ref.source
    atomic.write_json(rows, os.path.join(out, "baselines.json"))
    return rows


def calendar_summary_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the calendar bench."""
    head = (
        "| model | held-out td-C [95% CI] | Harrell C | Uno C | IBS | ECE | samples / events "
        "| trainable params | wall s |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ns, ne = r.get("n_samples"), r.get("n_events")
        lines.append(
            f"| {r['label']} | {td_ci_cell(r)} | {cell(r.get('c_index_harrell'))} "
            f"| {cell(r.get('c_index_uno'))} | {cell(r.get('ibs'))} | {cell(r.get('ece'), 3)} "
            f"| {cell(ns)} / {cell(ne)} | {cell(r.get('trainable_params'))} "
            f"| {cell(r.get('wall_s'), 0)} |"
        )
    return "\n".join(lines)


def calendar_summary_md(
    cohort: str, common: Sequence[str], results: list[dict[str, Any]], wall_s: float
) -> str:
    """``SUMMARY.md`` of the calendar bench."""
    rep_path = os.path.join(cohort, "synth_report.json")
    rep: dict[str, Any] = {}
    if os.path.exists(rep_path):
        with open(rep_path) as f:
            rep = json.load(f)
    cohort_line = f"Cohort `{cohort}`"
    if rep:
        cohort_line += (
            f": {int(rep['subjects']):,} samples (one per subject), death within "
            f"{rep['horizon_days']:g} days {rep['died_within_horizon']:.1%}"
        )
    refs = sorted({str(r["reference"]) for r in results if r.get("reference")})
    return "\n".join(
        [
            "# Model comparison on the calendar axis (`ehrsurv bench models --axis calendar`)",
            "",
            f"{cohort_line}; base job `jobs/finetune_calendar.yaml`, same splits and seed for "
            f"every row; common overrides: `{' '.join(common) or '(none)'}`. Total wall time "
            f"{wall_s:.0f} s on {os.cpu_count()} CPU(s).",
            "",
            calendar_summary_table(results),
            "",
            "Every row is scored by `calendar_metrics` on the same held-out samples at the runs' "
            "day bins" + (f" (baselines against `{', '.join(refs)}`)" if refs else "") + ". "
            "td-C: Antolini's time-dependent C; Harrell / Uno C of 1 − S(horizon); IBS up to "
            "the horizon; ECE: calibration error at the horizon (predicted vs Kaplan–Meier). "
            "oracle: the generator's exact survival with the frailty at its mean (the fair "
            "ceiling); oracle with frailty: with each sample's frailty (unreachable). "
            "cox_counts: elastic-net Cox (l1_ratio 0.1, penalty chosen on the tuning split) on log1p counts of each "
            "vocabulary code over the **full** history before the prediction time (the models "
            "read the most recent `data.max_seq_len` tokens) plus the age at the prediction "
            "time; its trainable params are its coefficients.",
            "",
        ]
    )
