"""``ehrsurv bench models`` / ``ehrsurv bench losses``: the seed's comparisons, measured.

Every row is one ordinary fine-tuning run (``train.launch.run_training``, Ray Train +
DeepSpeed, the product's own path) on the same cohort, splits and seed, followed by the
product's evaluation (``evaluate.evaluate_run``: Ray Data inference, whole-split metrics,
bootstrap intervals). The first row is the generator's oracle: its true ``hazard_observable``
scored by the same metric code on the same held-out subjects, the best a model can reach.

Output directory::

    OUT/cohort/            the synthetic cohort (unless --cohort is given)
    OUT/runs/NAME/         one run directory per row (resumable: a finished row is reused)
    OUT/bench.json         flat keys ``<row>_<metric>`` plus the settings
    OUT/SUMMARY.md         the table
    OUT/plots/*.png        held-out td-C with its 95% interval per row

Columns: held-out td-C [95% CI], Harrell C, IBS, calibration error at the median horizon
(``ece``), trainable parameters, wall time, epochs to the best validation score, the
train–validation gap (td-C on train − td-C on tuning: overfitting), and the leakage diagnostics
(``length_only`` AUC and td-C on randomly truncated held-out histories).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist import schema as S
from ehrsurv_dist import task as T
from ehrsurv_dist.bench.calendar import metrics_entry
from ehrsurv_dist.bench.table import cell, difference, td_ci_cell
from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.synth_report import write_synth_report
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.evaluate import evaluate_run
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train.launch import run_training
from ehrsurv_dist.tune import count_parameters

Overrides = tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One benchmark row: a name, a label and the job overrides that make it."""

    name: str
    label: str
    overrides: Overrides
    pretrained: bool = False  # fine-tune from the shared pretraining run


def model_rows() -> list[Row]:
    """The seed's model comparison (docs/benchmarks.md): strategies × pretraining, families, masks."""
    lora = ("finetune.strategy=lora", "finetune.lora_rank=16")
    return [
        Row("behrt_frozen_pre", "BEHRT frozen, pretrained", ("finetune.strategy=frozen",), True),
        Row("behrt_lora_pre", "BEHRT LoRA r=16, pretrained", lora, True),
        Row("behrt_full_pre", "BEHRT full, pretrained", ("finetune.strategy=full",), True),
        Row("behrt_frozen_scratch", "BEHRT frozen, from scratch", ("finetune.strategy=frozen",)),
        Row(
            "behrt_lora_scratch",
            "BEHRT LoRA r=16 + embeddings, from scratch",
            (*lora, "finetune.train_embeddings=true"),
        ),
        Row("behrt_full_scratch", "BEHRT full, from scratch", ("finetune.strategy=full",)),
        Row(
            "behrt_full_bidirectional",
            "BEHRT full, bidirectional attention (leaks)",
            ("finetune.strategy=full", "model.attention=bidirectional"),
        ),
        Row(
            "hierarchical_full",
            "hierarchical BEHRT full, from scratch",
            ("model.arch=hierarchical", "finetune.strategy=full"),
        ),
        Row("lstm", "LSTM baseline", ("model.arch=lstm", "finetune.strategy=full")),
    ]


def loss_rows() -> list[Row]:
    """The seed's loss comparison (docs/survival.md): same model, same splits."""
    rows = [
        Row("nll", "NLL (discrete-time likelihood)", ("finetune.loss=nll",)),
        Row("rank_hinge", "rank, hinge", ("finetune.loss=rank", "finetune.rank_loss=hinge")),
        Row(
            "rank_logistic",
            "rank, logistic",
            ("finetune.loss=rank", "finetune.rank_loss=logistic"),
        ),
    ]
    for lam in (0.01, 0.05, 0.1, 0.2, 0.5):
        rows.append(
            Row(
                f"hybrid_{lam:g}".replace(".", "p"),
                f"hybrid λ_rank={lam:g}",
                ("finetune.loss=hybrid", f"finetune.lambda_rank={lam:g}"),
            )
        )
    rows.append(Row("cox", "Cox partial likelihood", ("finetune.loss=cox",)))
    return rows


def _run_dir_done(run: str) -> dict[str, Any] | None:
    path = os.path.join(run, "bench_row.json")
    if os.path.exists(path):
        with open(path) as f:
            d: dict[str, Any] = json.load(f)
            return d
    return None


def run_row(
    row: Row,
    cohort: str,
    out: str,
    common: Sequence[str],
    pretrain_run: str | None,
    n_boot: int,
    job: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one row (or reuse its finished result); returns its table entry.

    ``job``: the base job file (the calendar bench's ``jobs/finetune_calendar.yaml``); None:
    the defaults (the visit bench)."""
    run = os.path.join(out, "runs", row.name)
    done = _run_dir_done(run)
    if done is not None:
        return done
    over: list[Any] = [*common, *row.overrides, ("data.cohort", cohort)]
    if row.pretrained:
        if pretrain_run is None:
            raise ValueError(f"row {row.name} needs the pretraining run")
        over.append(("finetune.init", pretrain_run))
    spec = load_config(JobSpec, job, over)
    t0 = time.perf_counter()
    res = run_training(spec, "finetune", run, progress=False)
    train_s = time.perf_counter() - t0
    m = evaluate_run(run, splits=(S.TRAIN_SPLIT, S.TUNING_SPLIT, S.HELD_OUT_SPLIT), n_boot=n_boot)
    wall = time.perf_counter() - t0
    vocab_size = Vocabulary.load(rundir.path(run, rundir.VOCAB)).size
    # the run's own day bins size a calendar head (the spec's are resolved at launch)
    trainable, total = count_parameters(T.with_run_edges(spec, run), vocab_size)
    held, tun, tr = m[S.HELD_OUT_SPLIT], m[S.TUNING_SPLIT], m[S.TRAIN_SPLIT]
    entry = {
        "name": row.name,
        "label": row.label,
        **(metrics_entry(held) if job is not None else _visit_metrics(held)),
        "trainable_params": trainable,
        "total_params": total,
        "wall_s": wall,
        "train_s": train_s,
        "epochs_to_best": res.best_epoch + 1,
        "epochs_run": len(res.history),
        "train_c_index_td": tr.get("c_index_td"),
        "tuning_c_index_td": tun.get("c_index_td"),
        "train_val_gap": difference(tr.get("c_index_td"), tun.get("c_index_td")),
    }
    if job is None:  # the visit axis's leakage diagnostics
        entry["length_only_auc"] = (held.get("length_only") or {}).get("auc_length_event")
        entry["truncated_c_index_td"] = (held.get("leakage") or {}).get(
            "random_truncation_c_index_td"
        )
    atomic.write_json(entry, os.path.join(run, "bench_row.json"))
    return entry


def _visit_metrics(held: dict[str, Any]) -> dict[str, Any]:
    """The table columns of a visit-axis split's metrics."""
    return {
        "c_index_td": held.get("c_index_td"),
        "c_index_td_ci": held.get("c_index_td_ci"),
        "c_index_harrell": held.get("c_index_harrell"),
        "c_index_uno": held.get("c_index_uno"),
        "ibs": held.get("ibs"),
        "ibs_ci": held.get("ibs_ci"),
        "ece": (held.get("calibration") or {}).get("ece"),
    }


def oracle_row(cohort: str) -> dict[str, Any]:
    """The generator's ``hazard_observable`` on the held-out split, scored like a model."""
    with open(os.path.join(cohort, "synth_report.json")) as f:
        rep = json.load(f)
    o = rep["oracle_held_out"]["hazard_observable"]
    return {
        "name": "oracle",
        "label": "oracle: generator's observable hazard (fair ceiling)",
        "c_index_td": o["c_index_td"],
        "c_index_harrell": o["c_index_harrell"],
        "ibs": o.get("ibs"),
    }


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | held-out td-C [95% CI] | Harrell C | IBS | ECE | trainable params | wall s "
        "| epochs to best | train−val gap | length-only AUC | truncated td-C |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {td_ci_cell(r)} | {cell(r.get('c_index_harrell'))} | {cell(r.get('ibs'))} "
            f"| {cell(r.get('ece'), 3)} | {cell(r.get('trainable_params'))} "
            f"| {cell(r.get('wall_s'), 0)} | {cell(r.get('epochs_to_best'))} "
            f"| {cell(r.get('train_val_gap'), 3)} | {cell(r.get('length_only_auc'), 3)} "
            f"| {cell(r.get('truncated_c_index_td'))} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.5))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        td = r.get("c_index_td")
        if td is None:
            continue
        ci = r.get("c_index_td_ci")
        colour = "black" if r["name"] == "oracle" else "C0"
        if ci and None not in ci:
            ax.errorbar(td, yi, xerr=[[td - ci[0]], [ci[1] - td]], fmt="o", color=colour)
        else:
            ax.plot(td, yi, "D", color=colour)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel("held-out td-C (95% bootstrap interval)")
    ax.set_title(title)
    fig.tight_layout()
    atomic.write_png(fig, path, 100)


def run_bench(
    kind: str,
    out: str,
    *,
    cohort: str | None = None,
    preset: str = "local",
    subjects: int | None = None,
    signal: float | None = None,
    seed: int = 42,
    common: Sequence[str] = (),
    pretrain_epochs: int = 4,
    n_boot: int = 200,
    only: Sequence[str] | None = None,
    note: Callable[[str], None] = lambda s: None,
    axis: str = "visit",
    epochs: int | None = None,
) -> dict[str, Any]:
    """Run ``kind`` (``models`` or ``losses``) and write bench.json, SUMMARY.md and plots.

    Args:
        kind: ``models`` (strategies, pretraining, families, attention) or ``losses``.
        out: output directory; re-running with the same ``out`` reuses finished rows.
        cohort: an existing synthetic cohort (with ``synth_report.json``); else one is made.
        preset, subjects, signal, seed: the synthetic cohort (``ehrsurv synth``; signal None:
            3 on the visit axis, the generator's 1 on the calendar axis; subjects None: the
            preset's on the visit axis, 5000 on the calendar axis).
        common: overrides of every row (model size, lr, workers...).
        pretrain_epochs: epochs of the shared joint MLM+NVP pretraining (``models`` only).
        n_boot: bootstrap resamples of the intervals.
        only: run just these row names.
        note: progress messages.
        axis: ``visit`` (the seed's comparison) or ``calendar`` (``models`` only; the rows of
            :mod:`ehrsurv_dist.bench.calendar`, base job ``jobs/finetune_calendar.yaml``).
        epochs: ``train.epochs`` of every fine-tuning row (None: the job's).
    """
    import ray  # Ray at the edge: the rows share one local cluster, shut down at the end

    if axis not in ("visit", "calendar"):
        raise ValueError(f"axis must be visit or calendar, got {axis!r}")
    if epochs is not None:
        common = [f"train.epochs={epochs}", *common]
    if axis == "calendar":
        if kind != "models":
            raise ValueError("--axis calendar applies to `bench models` only")
        return _run_calendar_bench(
            out,
            cohort=cohort,
            preset=preset,
            subjects=subjects,
            signal=signal,
            seed=seed,
            common=common,
            pretrain_epochs=pretrain_epochs,
            n_boot=n_boot,
            only=only,
            note=note,
        )
    signal = 3.0 if signal is None else signal
    os.makedirs(out, exist_ok=True)
    if cohort is None:
        cohort = _synthetic_cohort(out, preset, seed, subjects, signal, note)
    cohort = os.path.abspath(cohort)
    rows = _selected_rows(kind, only)
    started = not ray.is_initialized()
    t_all = time.perf_counter()
    results = [oracle_row(cohort)]
    try:
        pre_run = None
        if any(r.pretrained for r in rows):
            pre_run = _pretrain(out, cohort, common, pretrain_epochs, note)
        for i, row in enumerate(rows):
            note(f"[{i + 1}/{len(rows)}] {row.label}")
            results.append(run_row(row, cohort, out, common, pre_run, n_boot))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    flat = _flat(results, time.perf_counter() - t_all, signal, seed)
    atomic.write_json(flat, os.path.join(out, "bench.json"))
    title = "Model comparison" if kind == "models" else "Loss comparison"
    _plot(results, os.path.join(out, "plots", f"{kind}_c_index_td.png"), title)
    summary = _summary_md(kind, title, cohort, common, results, flat["wall_s"])
    atomic.write_text(summary, os.path.join(out, "SUMMARY.md"))
    return flat


def _synthetic_cohort(
    out: str,
    preset: str,
    seed: int,
    subjects: int | None,
    signal: float,
    note: Callable[[str], None],
) -> str:
    """``OUT/cohort``: the synthetic cohort with its report (made unless already there)."""
    cohort = os.path.join(out, "cohort")
    if not os.path.exists(os.path.join(cohort, "synth_report.json")):
        note(f"synthesising the {preset} cohort (signal {signal:g}) in {cohort}")
        synthesize(cohort, preset, seed=seed, subjects=subjects, signal=signal)
        write_synth_report(cohort)
    return cohort


def _selected_rows(kind: str, only: Sequence[str] | None) -> list[Row]:
    """The rows of ``kind``, or just those named in ``only`` (unknown names raise)."""
    rows = model_rows() if kind == "models" else loss_rows()
    if not only:
        return rows
    unknown = set(only) - {r.name for r in rows}
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; known: {[r.name for r in rows]}")
    return [r for r in rows if r.name in set(only)]


def _pretrain(
    out: str,
    cohort: str,
    common: Sequence[str],
    epochs: int,
    note: Callable[[str], None],
    base: Sequence[str] = (),
) -> str:
    """``OUT/runs/pretrain``: the shared joint MLM + NVP pretraining run (reused when done).

    ``base``: overrides before ``common`` (the calendar bench: the job's model size and data
    shape, so that the fine-tuning job can load the encoder)."""
    pre_run = os.path.join(out, "runs", "pretrain")
    if not os.path.exists(rundir.path(pre_run, rundir.EXPORT)):
        note(f"pretraining (joint MLM + NVP, {epochs} epochs)")
        over: list[Any] = [
            *base,
            *common,
            "pretrain.objective=joint",
            f"train.epochs={epochs}",
            ("data.cohort", cohort),
        ]
        run_training(load_config(JobSpec, None, over), "pretrain", pre_run, progress=False)
    return pre_run


def _flat(results: list[dict[str, Any]], wall_s: float, signal: float, seed: int) -> dict[str, Any]:
    """``bench.json``: the settings plus ``<row>_<metric>`` for every number (intervals as
    ``_lo`` / ``_hi``)."""
    flat: dict[str, Any] = {
        "rows": len(results) - 1,
        "wall_s": wall_s,
        "signal": signal,
        "seed": seed,
    }
    for r in results:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[f"{r['name']}_{k}"] = v
            elif k.endswith("_ci") and v:
                flat[f"{r['name']}_{k}_lo"], flat[f"{r['name']}_{k}_hi"] = v
    return flat


def _summary_md(
    kind: str,
    title: str,
    cohort: str,
    common: Sequence[str],
    results: list[dict[str, Any]],
    wall_s: float,
) -> str:
    """``SUMMARY.md``: the cohort, the settings, the table and how to read its columns."""
    with open(os.path.join(cohort, "synth_report.json")) as f:
        rep = json.load(f)
    return "\n".join(
        [
            f"# {title} (`ehrsurv bench {kind}`)",
            "",
            f"Cohort `{cohort}`: {rep['subjects']:,} subjects, {rep['events']:,} events, held-out "
            f"{rep['split_sizes'][S.HELD_OUT_SPLIT]:,}; every row: same splits and seed; "
            f"common overrides: `{' '.join(common) or '(defaults)'}`. Total wall time "
            f"{wall_s:.0f} s on {os.cpu_count()} CPU(s).",
            "",
            summary_table(results),
            "",
            "ECE: calibration error at the median event horizon (predicted vs Kaplan–Meier). "
            "train−val gap: td-C on train minus td-C on tuning. length-only AUC: how well the "
            "number of visits alone separates events (docs/survival.md). truncated td-C: held-out "
            "histories cut at a random visit (docs/design.md §3).",
            "",
        ]
    )


def _run_calendar_bench(
    out: str,
    *,
    cohort: str | None,
    preset: str,
    subjects: int | None,
    signal: float | None,
    seed: int,
    common: Sequence[str],
    pretrain_epochs: int,
    n_boot: int,
    only: Sequence[str] | None,
    note: Callable[[str], None],
) -> dict[str, Any]:
    """``bench models --axis calendar``: the fine-tuning rows first (their predictions fix the
    held-out samples and the bins), then the oracles and the Cox baseline; the table lists the
    baselines first. See :mod:`ehrsurv_dist.bench.calendar`."""
    import ray

    from ehrsurv_dist.bench import calendar as C

    names = C.calendar_row_names()
    if only:
        unknown = set(only) - set(names)
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}; known: {names}")
    os.makedirs(out, exist_ok=True)
    sig = C.DEFAULT_SIGNAL if signal is None else signal
    if cohort is None:
        cohort = _calendar_cohort(out, preset, seed, subjects or C.DEFAULT_SUBJECTS, sig, note)
    cohort = os.path.abspath(cohort)
    wanted = [n for n in names if not only or n in set(only)]
    rows = [r for r in C.calendar_model_rows() if r.name in wanted]
    job = C.CALENDAR_JOB
    spec = C.calendar_job(common)
    started = not ray.is_initialized()
    t_all = time.perf_counter()
    model_results = []
    try:
        pre_run = None
        if any(r.pretrained for r in rows):
            base = [
                f"model.size={spec.model.size}",
                f"data.max_seq_len={spec.data.max_seq_len}",
                f"data.batch_size={spec.data.batch_size}",
            ]
            pre_run = _pretrain(out, cohort, common, pretrain_epochs, note, base)
        for i, row in enumerate(rows):
            note(f"[{i + 1}/{len(rows)}] {row.label}")
            model_results.append(run_row(row, cohort, out, common, pre_run, n_boot, job))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    # the reference run: the first model row of the table that has finished predictions
    runs = [os.path.join(out, "runs", r.name) for r in C.calendar_model_rows()]
    baselines = C.run_baselines(wanted, cohort, out, spec, runs, n_boot, note)
    results = baselines + model_results
    flat = _flat(results, time.perf_counter() - t_all, sig, seed)
    flat["rows"] = len(results)  # no separate oracle row here: it is one of the results
    flat["axis"] = "calendar"
    atomic.write_json(flat, os.path.join(out, "bench.json"))
    _plot(results, os.path.join(out, "plots", "models_calendar_c_index_td.png"), "Calendar axis")
    summary = C.calendar_summary_md(cohort, common, results, flat["wall_s"])
    atomic.write_text(summary, os.path.join(out, "SUMMARY.md"))
    return flat


def _calendar_cohort(
    out: str, preset: str, seed: int, subjects: int, signal: float, note: Callable[[str], None]
) -> str:
    """``OUT/cohort``: a synthetic calendar cohort with its summary (made unless there)."""
    from ehrsurv_dist.data.synth_calendar import (
        CalendarParams,
        calendar_summary,
        synthesize_calendar,
    )

    cohort = os.path.join(out, "cohort")
    if not os.path.exists(os.path.join(cohort, "synth_report.json")):
        note(f"synthesising a calendar cohort of {subjects:,} subjects (signal {signal:g})")
        params = CalendarParams(signal=signal)
        synthesize_calendar(cohort, preset, subjects=subjects, seed=seed, params=params)
        rep = calendar_summary(cohort, params.horizon_days)
        atomic.write_json(rep, os.path.join(cohort, "synth_report.json"))
    return cohort
