"""``ehrsurv evaluate`` / ``ehrsurv predict``: a trained run's model over whole splits.

Batch inference runs on Ray Data: the split's compact blocks (one row per subject) stream from
the ingest tasks into ``map_batches`` over a pool of actors that each hold the exported model
(loaded once per actor from the run directory, which lives on storage every node reaches, as
Ray Train's checkpoints require), collate the block into padded batches and return per-subject
hazards as Arrow lists. The driver only gathers the per-subject results. ``use_ray=False`` runs the same
model over the single-process ingest path (same predictions; the tests compare them).

Predictions Parquet (docs/design.md §5): ``subject_id`` int64, ``split`` string, ``event`` bool,
``last_visit`` int32, ``risk`` float64, ``hazard`` list<float32>, ``survival`` list<float32>.
No input codes are written. Metrics are computed over each whole split (docs/design.md §4), plus
the leakage diagnostics: the length-only baseline and a random truncation of test histories.

Another cohort (``predict``, ``evaluate --cohort``): :func:`for_cohort` points the run's job at
it and drops the run's own outcome table; ``predict`` needs no outcomes, ``evaluate`` reads the
new cohort's (``--outcomes``, or its event codes on the calendar axis) and writes to its own
directory, never the run's. :func:`predict_table` is the one implementation behind
``ehrsurv predict`` (which writes the table) and :meth:`ehrsurv_dist.api.TrainedModel.predict`
(which returns it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ehrsurv_dist import atomic, calendar_eval, rundir
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist import task as T
from ehrsurv_dist.config import Override, apply_overrides, load_config
from ehrsurv_dist.data import io
from ehrsurv_dist.data.collate import batches_from_blocks
from ehrsurv_dist.data.pipeline import IngestPipeline, task_groups
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import CohortError, EhrsurvError, OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.ragged import Ragged, concat_ranges, offsets_of
from ehrsurv_dist.score_overrides import check_scoring_overrides
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.launch import init_ray
from ehrsurv_dist.train.loop import Predictions, predict

EVAL_SPLITS = (S.TUNING_SPLIT, S.HELD_OUT_SPLIT)
log = logging.getLogger(__name__)


def load_run(
    run_dir: str, overrides: Sequence[Override] = ()
) -> tuple[JobSpec, Vocabulary, dict[str, Any]]:
    """The run's resolved config, vocabulary (hash-checked) and exported model.

    Args:
        run_dir: a finished ``finetune`` run.
        overrides: ``KEY=VALUE`` overrides of how the run is scored (``eval.*``,
            ``train.use_gpu``, data-loading knobs: :mod:`ehrsurv_dist.score_overrides`);
            a key the trained model depends on raises :class:`ConfigError`.
    """
    cfg = rundir.path(run_dir, rundir.CONFIG)
    if not os.path.exists(cfg):
        raise EhrsurvError(f"{run_dir} is not a run directory (no {rundir.CONFIG})")
    spec = T.with_run_edges(load_config(JobSpec, cfg), run_dir)
    if overrides:
        check_scoring_overrides(overrides)
        spec = apply_overrides(spec, list(overrides))
    export_path = modeling.export_path(run_dir)
    export = modeling.load_export(export_path)
    vocab = Vocabulary.load(rundir.path(run_dir, rundir.VOCAB))
    vocab.check_hash(export["vocab_hash"], source=export_path)
    if export["mode"] != "finetune":
        raise EhrsurvError(f"{run_dir} is a {export['mode']} run: evaluate needs a finetune run")
    return spec, vocab, export


def for_cohort(
    spec: JobSpec,
    cohort: str,
    *,
    outcomes: str | None = None,
    labels: str | None = None,
    run_dir: str = "",
) -> JobSpec:
    """The run's job pointed at another cohort (``predict``, or ``evaluate --cohort``).

    A run's outcome table (``data.outcomes`` on the visit axis, ``task.outcomes`` on the
    calendar axis) belongs to its own cohort: it is dropped, and ``outcomes`` (the new
    cohort's table, or None) takes its place; without one the visit axis reads
    ``COHORT/outcomes.parquet`` when it exists, the calendar axis the event codes in the data.
    ``labels`` (calendar axis) replaces the run's source of prediction times.

    Raises:
        EhrsurvError: ``labels`` for a visit-axis run.
    """
    calendar = T.is_calendar(spec)
    data = dataclasses.replace(spec.data, cohort=cohort, outcomes=None if calendar else outcomes)
    task = dataclasses.replace(spec.task, outcomes=outcomes if calendar else None)
    if labels is not None:
        if not calendar:
            raise EhrsurvError(
                f"--labels needs a calendar-axis run; {run_dir or 'the run'} is on the visit axis"
            )
        pt = dataclasses.replace(task.prediction_times, at_code=None, days_after_first_record=None)
        task = dataclasses.replace(task, labels=labels, prediction_times=pt)
    return dataclasses.replace(spec, data=data, task=task)


def _pipeline(
    spec: JobSpec, vocab: Vocabulary, cohort: str, require_outcomes: bool
) -> IngestPipeline:
    data = dataclasses.replace(spec.data, cohort=cohort)
    spec = dataclasses.replace(spec, data=data)
    pipe = IngestPipeline(
        cohort,
        data,
        layout=modeling.layout_of(spec),  # type: ignore[arg-type]
        seed=spec.seed,
        require_outcomes=require_outcomes,
        task=T.task_spec(spec),
    )
    pipe.vocab = vocab
    edges = T.edges_of(spec)
    pipe.bin_edges = tuple(edges) if edges is not None else None
    return pipe


def predict_split(model: torch.nn.Module, pipe: IngestPipeline, split: str | None) -> Predictions:
    """Single-process inference over ``split`` (the reference path; no Ray)."""
    return predict(model, model, pipe.iter_batches(split, 0), torch.device("cpu"))


def _to_arrow(p: Predictions) -> pa.Table:
    off = pa.array(p.offsets.astype(np.int32))
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(p.subject_id, pa.int64()),
            S.EVENT: pa.array(p.event, pa.bool_()),
            S.LAST_VISIT: pa.array(p.last_visit, pa.int64()),
            "hazard": pa.ListArray.from_arrays(off, pa.array(p.values, pa.float32())),
            **{k: pa.array(v) for k, v in p.extra.items()},
        }
    )


def _from_arrow(tables: list[pa.Table]) -> Predictions:
    parts = []
    for t in tables:
        if t.num_rows == 0:
            continue
        h = t.column("hazard").combine_chunks()
        parts.append(
            Predictions(
                subject_id=t.column(S.SUBJECT_ID).to_numpy(),
                event=t.column(S.EVENT).to_numpy(zero_copy_only=False).astype(bool),
                last_visit=t.column(S.LAST_VISIT).to_numpy(),
                hazard=Ragged(  # flatten(): the values of this (maybe sliced) list array only
                    h.flatten().to_numpy(),
                    (h.offsets.to_numpy() - h.offsets[0].as_py()).astype(np.int64),
                ),
                extra={
                    k: t.column(k).to_numpy()
                    for k in (S.PREDICTION_TIME, S.TIME_DAYS)
                    if k in t.column_names
                },
            )
        )
    return Predictions.concat(parts)  # sorted by subject id: a canonical order


class ModelScorer:
    """Ray Data actor: holds the exported model; scores one block of compact rows per call.

    Args:
        export_path: the run's model folder (``RUN/model/``, safetensors), read once
            per actor: the run directory lives on storage every node reaches, as Ray Train's
            checkpoints already require.
        batch_spec: batching parameters (the run's).
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, export_path: str, batch_spec: Any, device: str = "cpu") -> None:
        self.device = torch.device(device)
        export = modeling.load_export(export_path)
        self.model = modeling.model_from_export(export).to(self.device)
        self.model.eval()
        self.spec = batch_spec

    def __call__(self, block: pa.Table) -> pa.Table:
        batches = batches_from_blocks([block], self.spec, 0)
        return _to_arrow(predict(self.model, self.model, batches, self.device))


def num_scorers(spec: JobSpec) -> int:
    """Actors of the scoring pool: ``eval.actors``, else the cluster's CPUs less one for the
    ingest tasks (GPUs: one actor per GPU)."""
    import ray  # Ray at the edge: importing this module (use_ray=False) must not import Ray

    if spec.eval.actors:
        return spec.eval.actors
    res = ray.cluster_resources()
    if scores_on_gpu(spec, res):
        return max(1, int(res.get("GPU", 0)))
    return max(1, int(res.get("CPU", 1)) - 1)


def scores_on_gpu(spec: JobSpec, cluster: dict[str, float]) -> bool:
    """Whether the scoring actors take GPUs: ``train.use_gpu`` (a run's config holds the value
    its training resolved; ``auto`` given as an override: GPUs when ``cluster`` has them, as
    training decides it)."""
    return spec.train.gpu_on(cluster)


def predict_split_ray(
    export_path: str, spec: JobSpec, pipe: IngestPipeline, split: str | None
) -> Predictions:
    """Ray Data batch inference over ``split``: ``map_batches`` with the model in actors.

    Args:
        export_path: the run's export file (absolute).
        spec: the run's config (``train.use_gpu``, ``eval.actors``).
        pipe: the ingest pipeline, vocabulary set.
        split: split name, or None for every subject.
    """
    import ray  # Ray at the edge (see num_scorers)
    import ray.data

    use_gpu = scores_on_gpu(spec, ray.cluster_resources())
    # no more actors than the ingest tasks that feed them (the map is fused into the actors)
    n = max(1, min(num_scorers(spec), len(task_groups(pipe.plan, pipe.num_tasks()))))
    ds = pipe.dataset(split)  # compact rows: any block boundary is safe for the scorer
    scored = ds.map_batches(
        ModelScorer,
        fn_constructor_kwargs={
            "export_path": os.path.abspath(export_path),
            "batch_spec": pipe.batch_spec(),
            "device": "cuda" if use_gpu else "cpu",
        },
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=0 if use_gpu else 1,
        num_gpus=1 if use_gpu else 0,
    )
    tables = list(scored.iter_batches(batch_size=None, batch_format="pyarrow"))
    return _from_arrow(tables)


def predictions_table(p: Predictions, split: str, risk: np.ndarray) -> pa.Table:
    """The predictions Parquet rows of one split (columns in the module doc; no input codes).

    Args:
        p: the split's predictions (N subjects).
        split: the split name written in every row.
        risk: float [N] scalar risk scores.
    """
    table = M.hazard_table_from_csr(p.values, p.offsets)
    surv = np.exp(table.log_survival_flat).astype(np.float32)
    off = pa.array(p.offsets.astype(np.int32))
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(p.subject_id, pa.int64()),
            S.SPLIT: pa.array([split] * len(p.subject_id), pa.string()),
            S.EVENT: pa.array(p.event, pa.bool_()),
            S.LAST_VISIT: pa.array(p.last_visit.astype(np.int32), pa.int32()),
            "risk": pa.array(risk.astype(np.float64), pa.float64()),
            "hazard": pa.ListArray.from_arrays(off, pa.array(p.values.astype(np.float32))),
            "survival": pa.ListArray.from_arrays(off, pa.array(surv)),
        }
    )


def truncated(p: Predictions, seed: int = 0) -> tuple[M.HazardTable, np.ndarray, np.ndarray]:
    """The seed's random-truncation diagnostic, on the model's own causal hazards.

    Each history is cut at a uniformly drawn visit u <= T and scored as censored there. With
    visit-causal attention the hazards of visits <= u do not depend on later visits, so the
    predictions of the truncated history are a prefix of the full ones (docs/design.md §3).
    """
    rng = np.random.default_rng(seed)
    u = (rng.random(len(p.last_visit)) * (p.last_visit + 1)).astype(np.int64)  # 0..T
    vals = p.values[concat_ranges(p.offsets[:-1], u + 1)]  # the first u + 1 hazards of each
    ev = p.event & (u == p.last_visit)
    return M.hazard_table_from_csr(vals, offsets_of(u + 1)), u, ev


class _Scoring:
    """Where a run's model scores a split: Ray Data actors (default) or this process.

    Starts an in-process local Ray (``train.launch.init_ray``) when none is running and stops it
    again on exit; an existing Ray (``ray.init`` done, or ``RAY_ADDRESS``) is used as it is.
    """

    def __init__(
        self,
        spec: JobSpec,
        run_dir: str,
        export: dict[str, Any],
        use_ray: bool,
        model: torch.nn.Module | None = None,
    ) -> None:
        self.spec, self.export, self.use_ray = spec, export, use_ray
        self.export_path = modeling.export_path(run_dir)
        self.built = model  # the export's model, already built (in-process scoring)
        self.model: torch.nn.Module | None = None
        self.started = False

    def __enter__(self) -> _Scoring:
        if not self.use_ray:
            built = self.built
            self.model = built if built is not None else modeling.model_from_export(self.export)
            return self
        import ray  # Ray at the edge (see num_scorers)

        self.started = not ray.is_initialized()
        init_ray(self.spec)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            import ray  # Ray at the edge (see num_scorers)

            ray.shutdown()

    def __call__(self, pipe: IngestPipeline, split: str | None) -> Predictions:
        if self.model is not None:
            return predict_split(self.model, pipe, split)
        return predict_split_ray(self.export_path, self.spec, pipe, split)

    def labels(self, pipe: IngestPipeline, split: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(last_visit, event) of every subject of ``split`` — on the calendar axis (time_days,
        event) of every sample — without running the model (the train split's labels give the
        censoring distribution of IBS and Uno's C)."""
        time_col = S.TIME_DAYS if pipe.spec.task is not None else S.LAST_VISIT
        cols = [S.SUBJECT_ID, time_col, S.EVENT]
        if self.model is not None:
            blocks = [b.select(cols) for b in pipe.blocks(split)]
        else:
            ds = pipe.dataset(split).select_columns(cols)
            blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        t = pa.concat_tables(blocks) if blocks else None
        if t is None or t.num_rows == 0:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        t = t.sort_by(S.SUBJECT_ID)
        return (
            t.column(time_col).to_numpy(),
            t.column(S.EVENT).to_numpy(zero_copy_only=False).astype(bool),
        )


ALL = "all"  # the split name of a new cohort's predictions scored as one set


def evaluate_run(
    run_dir: str,
    splits: tuple[str, ...] | None = EVAL_SPLITS,
    n_boot: int | None = None,
    *,
    use_ray: bool = True,
    overrides: Sequence[Override] = (),
    cohort: str | None = None,
    outcomes: str | None = None,
    labels: str | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Predict and score ``splits``; writes predictions, metrics' plots and (calendar) the
    time axis to ``out`` (default: the run directory).

    Args:
        run_dir: a finished ``finetune`` run.
        splits: splits to score (each over the whole split); None with ``cohort``: every
            subject of the cohort, as one set named ``all``.
        n_boot: bootstrap resamples (None: the run's ``eval.n_boot``).
        use_ray: batch inference on Ray Data actors (False: in this process).
        overrides: scoring overrides (:func:`load_run`).
        cohort: score this cohort instead of the run's own (external validation): the
            censoring distribution of IPCW (Uno's C, IBS) is then that of all its subjects;
            ``splits`` must be the cohort's own (``metadata/subject_splits.parquet``).
        outcomes: ``cohort``'s outcome table (visit axis: ``data.outcomes``, default
            ``COHORT/outcomes.parquet``; calendar axis: ``task.outcomes``, default the event
            codes in the data).
        labels: calendar axis: ``cohort``'s MEDS label file (the prediction times).
        out: output directory; required with ``cohort``, and never the run directory then.

    Raises:
        OutputError: ``cohort`` without ``out``, or ``out`` is the run directory.
        CohortError: ``splits`` given for a cohort without its own split file.
    """
    spec, vocab, export = load_run(run_dir, overrides)
    _check_out(run_dir, out, new_cohort=cohort is not None)
    if cohort is None:
        if outcomes is not None or labels is not None:
            raise EhrsurvError(
                "--outcomes and --labels name a new cohort's files: give its --cohort too"
            )
        splits = splits or EVAL_SPLITS
        train_split: str | None = S.TRAIN_SPLIT
    else:
        if T.is_calendar(spec) and spec.task.outcomes is not None and outcomes is None:
            raise EhrsurvError(
                f"{run_dir} reads its outcomes from an outcome table (task.outcomes): give "
                f"{cohort}'s with --outcomes"
            )
        spec = for_cohort(spec, cohort, outcomes=outcomes, labels=labels, run_dir=run_dir)
        if splits:
            _check_own_splits(cohort)
        train_split = None
    out = out or run_dir
    pipe = _pipeline(spec, vocab, spec.data.cohort, require_outcomes=True)
    with _Scoring(spec, run_dir, export, use_ray) as score:
        train = score.labels(pipe, train_split)
        if splits:
            preds = {split: score(pipe, split) for split in splits}
        else:
            preds = {ALL: score(pipe, None)}
    edges = T.edges_of(spec)
    if edges is not None:
        return calendar_eval.score_splits(out, spec, edges, train, preds, n_boot)
    return _score_splits(out, spec, train, preds, n_boot)


def _check_out(run_dir: str, out: str | None, new_cohort: bool) -> None:
    """Scores of another cohort go to their own directory, never into the run's; an ``out``
    other than the run directory is never another run's."""
    if out is None:
        if new_cohort:
            raise OutputError(
                "evaluating another cohort needs --out DIR (the run directory keeps "
                "the scores of its own cohort)"
            )
        return
    if os.path.realpath(out) == os.path.realpath(run_dir):
        if new_cohort:
            raise OutputError(
                f"--out {out} is the run directory: the scores of another cohort go to a "
                "folder of their own"
            )
        return
    if os.path.exists(rundir.path(out, rundir.CONFIG)):
        raise OutputError(f"--out {out} is another run's directory; give a new folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} exists and is not a directory")


def _check_own_splits(cohort: str) -> None:
    """Splits of a new cohort are its own MEDS split file's, never drawn for it."""
    path = io.join(cohort, S.SUBJECT_SPLITS_PATH)
    fs, p = io.resolve(path)
    if not io.exists(fs, p):
        raise CohortError(
            f"--split needs the cohort's own splits: there is no {path}; leave --split out to "
            "score all its subjects"
        )


def _score_splits(
    out: str,
    spec: JobSpec,
    train: tuple[np.ndarray, np.ndarray],
    preds: dict[str, Predictions],
    n_boot: int | None,
) -> dict[str, Any]:
    """Metrics of every split (JSON-ready), plus the predictions Parquet and the plots, written
    under ``out`` (the run directory's layout: ``predictions/``, ``plots/``)."""
    results: dict[str, Any] = {}
    tables = []
    for split, p in preds.items():
        if len(p.subject_id) == 0:
            results[split] = {"n_subjects": 0, "warnings": [f"split {split} is empty"]}
            continue
        ht = M.hazard_table_from_csr(p.values, p.offsets)
        m = _split_metrics(spec, ht, p, train, n_boot)
        results[split] = M.jsonable(m)
        risk = _risk(spec, ht)
        tables.append(predictions_table(p, split, risk))
        _plot_split(rundir.path(out, rundir.PLOTS), split, p, ht, risk, m)
    if tables:
        atomic.write_parquet(pa.concat_tables(tables), rundir.path(out, rundir.PREDICTIONS))
    return results


def _risk(spec: JobSpec, ht: M.HazardTable) -> np.ndarray:
    """float64 [N]: the run's scalar risk score (``finetune.risk_score``) of every subject."""
    f = spec.finetune
    return M.risk_scores(ht, risk_score=f.risk_score, risk_k=f.risk_k, risk_n=f.risk_n)


def _split_metrics(
    spec: JobSpec,
    ht: M.HazardTable,
    p: Predictions,
    train: tuple[np.ndarray, np.ndarray],
    n_boot: int | None,
) -> dict[str, Any]:
    """``evaluate_split`` of one split with the run's settings, plus the leakage diagnostics."""
    f = spec.finetune
    m = M.evaluate_split(
        ht,
        p.last_visit,
        p.event,
        train[0],
        train[1],
        risk_score=f.risk_score,
        horizons=spec.eval.horizons,
        n_boot=spec.eval.n_boot if n_boot is None else n_boot,
        risk_k=f.risk_k,
        risk_n=f.risk_n,
        seed=spec.seed,
        calibration_horizon=spec.eval.calibration_horizon,
    )
    tt, tu, tev = truncated(p, spec.seed)
    m["leakage"] = {
        "random_truncation_c_index_td": M.concordance_td(tt, tu, tev),
        "full_history_c_index_td": m.get("c_index_td"),
        "length_only": m.get("length_only"),
    }
    return m


def _plot_split(
    pdir: str, split: str, p: Predictions, ht: M.HazardTable, risk: np.ndarray, m: dict[str, Any]
) -> None:
    """The split's diagnostic plots in ``pdir``: risk against length, calibration, survival
    curves and Kaplan–Meier curves by risk tertile."""
    # matplotlib is imported only when a run is scored, not by `predict` or by importing this module
    from ehrsurv_dist.metrics import plots

    os.makedirs(pdir, exist_ok=True)
    plots.plot_risk_vs_length(
        risk, p.last_visit, os.path.join(pdir, f"risk_vs_length_{split}.png"), event=p.event
    )
    if m.get("calibration"):
        plots.plot_calibration(m["calibration"], os.path.join(pdir, f"calibration_{split}.png"))
    plots.plot_survival_curves(
        ht, p.last_visit, os.path.join(pdir, f"survival_{split}.png"), event=p.event
    )
    plots.plot_km_by_risk_group(
        ht,
        risk,
        p.last_visit,
        p.event,
        os.path.join(pdir, f"km_risk_tertiles_{split}.png"),
        risk_name=m["risk_score"],
    )


@dataclasses.dataclass
class PredictReport:
    """What ``predict`` did: counts only (no codes, no subjects)."""

    subjects: int
    tokens: int
    unknown_tokens: int  # input tokens whose code the run's vocabulary lacks: mapped to UNK
    truncated: int  # subjects whose history was cut to the run's max_seq_len / max_visits

    def summary(self, out: str) -> str:
        share = self.unknown_tokens / self.tokens if self.tokens else 0.0
        return (
            f"wrote predictions of {self.subjects:,} subjects to {out}; "
            f"{self.unknown_tokens:,} of {self.tokens:,} input tokens ({share:.1%}) had codes "
            f"unknown to the run's vocabulary (mapped to UNK); {self.truncated:,} histories "
            "truncated to the run's limits"
        )


def predict_table(
    run_dir: str,
    spec: JobSpec,
    vocab: Vocabulary,
    export: dict[str, Any],
    *,
    use_ray: bool = True,
    model: torch.nn.Module | None = None,
) -> tuple[pa.Table, PredictReport]:
    """The predictions of every subject (calendar axis: every sample) of ``spec.data.cohort``,
    in the predictions contract (split ``all``; no metrics), and what was read.

    Args:
        run_dir: the run (its model folder, for the Ray actors).
        spec, vocab, export: :func:`load_run`'s, the spec pointed at the cohort
            (:func:`for_cohort`).
        use_ray: Ray Data ingest and batch inference (False: in this process, no Ray).
        model: the export's model, already built (in-process only; None builds it).
    """
    pipe = _pipeline(spec, vocab, spec.data.cohort, require_outcomes=False)
    with _Scoring(spec, run_dir, export, use_ray, model) as score:
        stats = pipe.fit(vocab, use_ray=use_ray).stats
        p = score(pipe, None)
    edges = T.edges_of(spec)
    if edges is not None:
        table = calendar_eval.predictions_table(p, ALL, edges)
    else:
        table = predictions_table(p, ALL, _risk(spec, M.hazard_table_from_csr(p.values, p.offsets)))
    trunc = "truncated_flat" if pipe.layout == "flat" else "truncated_hierarchical"
    report = PredictReport(
        subjects=len(p.subject_id),
        tokens=sum(st["tokens"] for st in stats.values()),
        unknown_tokens=sum(st["unknown_tokens"] for st in stats.values()),
        truncated=sum(st[trunc] for st in stats.values()),
    )
    return table, report


def predict_cohort(
    run_dir: str,
    cohort: str,
    out: str,
    *,
    use_ray: bool = True,
    labels: str | None = None,
    overrides: Sequence[Override] = (),
) -> PredictReport:
    """Predictions for every subject of another cohort (no metrics), written to ``out``
    atomically — on the calendar axis for every sample of the run's task (its rule, or
    ``labels``: a MEDS label file of this cohort).

    The run's outcome table is not read (:func:`for_cohort`). Codes unseen when the run's
    vocabulary was fitted map to UNK; they are counted (one scan of the cohort, on Ray when
    ``use_ray``), as are the truncated histories.
    """
    spec, vocab, export = load_run(run_dir, overrides)
    spec = for_cohort(spec, cohort, labels=labels, run_dir=run_dir)
    table, report = predict_table(run_dir, spec, vocab, export, use_ray=use_ray)
    atomic.write_parquet(table, out)
    log.info("%s", report.summary(out))
    return report
