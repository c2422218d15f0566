"""What a sweep produced: one row per trial from its run directory, and the finish of a sweep.

A trial's history, best epoch and status are read from its run's latest Ray Train checkpoint,
not from Tune's result: Tune may end a trial's driver as soon as the scheduler says stop (even
after the last epoch), before ``run_training`` writes its export and metrics, and checkpoints
survive resumes. The finish scores each trial's best model on ``tuning`` (IBS), picks the best
selectable trial by validation td-C, and scores that one on ``held_out`` once.

No Ray here: it reads files that Ray Train wrote.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.evaluate import evaluate_run
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.metrics import jsonable
from ehrsurv_dist.models.lora import trainable_parameters
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.worker import LOOP_FILE, MODEL_FILE
from ehrsurv_dist.tune.report import (
    PLOT_FILE,
    is_score,
    markdown_table,
    num,
    write_best_yaml,
    write_results,
)
from ehrsurv_dist.tune.search_space import Trial, TuneJobSpec, short_value

TRIALS_DIR = "trials"  # OUT/trials/tNNN_NAME/: one finetune run directory per trial
METRIC = "val_score"  # validation td-C of a finetune run (worker.py reports it every epoch)


@dataclass
class SweepResult:
    """The rows of a finished sweep, its best row and that trial's held-out metrics."""

    out: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    held_out: dict[str, Any] | None

    def summary(self) -> str:
        """The table and where the results lie, for the console."""
        lines = [markdown_table(self.rows)]
        if self.best is not None:
            lines.append(
                f"best: {self.best['trial']} (validation td-C {num(self.best['val_td_c'])}) -> "
                f"{self.out}/best.yaml"
            )
        if self.held_out:
            lines.append(
                f"best trial on held_out (n={self.held_out.get('n_subjects')}): "
                f"td-C {num(self.held_out.get('c_index_td'))}  IBS {num(self.held_out.get('ibs'))}"
            )
        lines.append(f"results: {self.out}/results.md  plot: {self.out}/{PLOT_FILE}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# One trial
# --------------------------------------------------------------------------------------------


def collect_trial(run_dir: str, trial: Trial, spec: JobSpec, result: Any | None) -> dict[str, Any]:
    """One results row from the trial's run directory and its Tune result (may be None).

    History, best epoch and status come from the run's latest checkpoint (they survive
    resumes): ``completed`` when the run trained to its end (last epoch, or patience ran out),
    ``stopped`` when the scheduler ended it earlier, ``error`` when Tune reports an error.
    """
    row = _empty_row(trial, spec)
    state = run_state(run_dir)
    history = state.get("history", [])
    if history:
        best = max(history, key=lambda h: h.get(METRIC, -math.inf))
        row["val_td_c"] = best.get("val_c_index_td")
        row["best_epoch"] = int(best["epoch"])
        row["epochs"] = len(history)
    patience = spec.train.patience
    finished = bool(history) and (
        state.get("epoch", 0) >= spec.train.epochs
        or (patience > 0 and state.get("bad_epochs", 0) >= patience)
    )
    if finished:
        row["status"] = "completed"
    elif result is not None and result.error is not None:
        row["status"] = "error"
        row["error"] = str(result.error).strip().splitlines()[-1][:200]
    elif history:
        row["status"] = "stopped"  # by the scheduler (ASHA) before the run's end
    if result is not None and result.metrics:
        row["wall_s"] = result.metrics.get("time_total_s")
    vocab_path = os.path.join(run_dir, rundir.VOCAB)
    if os.path.exists(vocab_path):
        row["trainable_params"], row["total_params"] = count_parameters(
            spec, Vocabulary.load(vocab_path).size
        )
    return row


def _empty_row(trial: Trial, spec: JobSpec) -> dict[str, Any]:
    """The row of a trial that has not started: its name, branch and values, no scores."""
    f = spec.finetune
    return {
        "trial": trial.name,
        "space": trial.space,
        "selectable": trial.select,
        "strategy": f.strategy,
        "loss": f.loss,
        "params": " ".join(
            f"{k.rsplit('.', 1)[-1]}={short_value(v)}"
            for k, v in trial.overrides.items()
            if k not in ("finetune.strategy", "finetune.loss")
        ),
        "trainable_params": None,
        "total_params": None,
        "val_td_c": None,
        "best_epoch": None,
        "epochs": 0,
        "status": "not started",
        "tuning_td_c": None,
        "tuning_ibs": None,
        "wall_s": None,
    }


def run_state(run_dir: str) -> dict[str, Any]:
    """The loop state (epoch, bad_epochs, history) of a possibly unfinished run: that of its
    latest checkpoint, the one with the longest history ({} without checkpoints)."""
    latest: dict[str, Any] = {}
    root = os.path.join(run_dir, rundir.RAY_DIR, rundir.RUN_NAME)
    if not os.path.isdir(root):
        return latest
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d, LOOP_FILE)
        if d.startswith("checkpoint_") and os.path.exists(path):
            try:
                with open(path) as fh:
                    state = dict(json.load(fh))
            except (OSError, ValueError):
                continue  # a checkpoint cut short by a stopped trial
            if len(state.get("history", [])) > len(latest.get("history", [])):
                latest = state
    return latest


def run_history(run_dir: str) -> list[dict[str, Any]]:
    """Per-epoch metrics of a (possibly unfinished) run, from its latest checkpoint."""
    return list(run_state(run_dir).get("history", []))


def count_parameters(spec: JobSpec, vocab_size: int) -> tuple[int, int]:
    """(trainable, total) parameters of the job's survival model under its strategy."""
    model = modeling.build_model(spec, vocab_size, "finetune")
    modeling.prepare_finetune(model, spec)
    rep = trainable_parameters(model)
    return rep.trainable, rep.total


def export_best_checkpoint(run_dir: str, spec: JobSpec, *, fresh: bool = False) -> bool:
    """Give a run stopped by the scheduler the export a finished run has; False if none.

    A finished run already has its ``model/`` folder; a stopped one has only Ray
    Train's checkpoints, each with its epoch's consolidated weights and history: the one with
    the best validation score becomes the export (what ``run_training`` does at the end).
    ``fresh`` rebuilds an existing export (a run that errored, was exported, then resumed).
    """
    export = os.path.join(run_dir, rundir.EXPORT)
    if os.path.exists(export) and not fresh:
        return True
    best = best_checkpoint(run_dir)
    if best is None:
        return False
    payload = torch.load(os.path.join(best, MODEL_FILE), map_location="cpu", weights_only=True)
    vocab_path = os.path.join(run_dir, rundir.VOCAB)
    vocab = Vocabulary.load(vocab_path)
    modeling.save_export(
        export,
        payload["state_dict"],
        modeling.model_config(spec, vocab.size),
        spec,
        "finetune",
        vocab.hash,
        vocab_path=vocab_path,
        epoch=payload["epoch"],
        adapters=payload.get("adapters"),
    )
    return True


def best_checkpoint(run_dir: str) -> str | None:
    """The Ray Train checkpoint folder whose last epoch scored best (None without weights).

    The first of equal scores wins, in folder order; a checkpoint without a readable history
    or without weights is passed over.
    """
    root = os.path.join(run_dir, rundir.RAY_DIR, rundir.RUN_NAME)
    best: tuple[float, str] | None = None
    for d in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        ck = os.path.join(root, d)
        try:
            with open(os.path.join(ck, LOOP_FILE)) as fh:
                last = json.load(fh)["history"][-1]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if os.path.exists(os.path.join(ck, MODEL_FILE)):
            score = float(last.get(METRIC, -math.inf))
            if best is None or score > best[0]:
                best = (score, ck)
    return None if best is None else best[1]


# --------------------------------------------------------------------------------------------
# The sweep's finish
# --------------------------------------------------------------------------------------------


def finish_sweep(
    out: str,
    spec: TuneJobSpec,
    trials: Sequence[Trial],
    specs: Sequence[JobSpec],
    rows: list[dict[str, Any]],
) -> SweepResult:
    """Evaluate every trial's best model on ``tuning`` (IBS), write tables, plot, best.yaml,
    and score the best trial on ``held_out`` once."""
    root = os.path.join(out, TRIALS_DIR)
    for t, s, row in zip(trials, specs, rows, strict=True):
        if row["val_td_c"] is not None:
            score_on_tuning(os.path.join(root, t.name), s, row)
    best = pick_best(rows)
    if best is None:
        errors = "; ".join(f"{r['trial']}: {r.get('error', r['status'])}" for r in rows[:3])
        write_results(out, rows)
        raise EhrsurvError(f"no selectable trial produced a validation score ({errors})")
    i = [r["trial"] for r in rows].index(best["trial"])
    best_dir = os.path.join(root, trials[i].name)
    held: dict[str, Any] | None = None
    if spec.tune.evaluate_held_out:
        held = score_on_held_out(best_dir, best)
        atomic.write_json(
            {"trial": best["trial"], "run_dir": best_dir, "held_out": held},
            os.path.join(out, "held_out.json"),
        )
    write_best_yaml(specs[i], os.path.join(out, "best.yaml"), out, best)
    write_results(out, rows, best["trial"])
    return SweepResult(out, rows, best, held)


def score_on_tuning(run_dir: str, spec: JobSpec, row: dict[str, Any]) -> None:
    """Fill the row's ``tuning_td_c`` / ``tuning_ibs`` from the trial's best model on
    ``tuning`` (cached in its ``metrics.json`` when a resumed sweep scored it already)."""
    cached = _cached_metrics(run_dir, row["epochs"])
    if cached is not None and "tuning" in cached:  # a resumed sweep: scored already
        m = cached["tuning"]
    else:
        # the driver may have been ended before its export: build it from the checkpoints
        if not export_best_checkpoint(run_dir, spec, fresh=True):
            return
        m = evaluate_run(run_dir, splits=("tuning",), n_boot=0)["tuning"]
        _write_run_metrics(run_dir, row, m, None)
    row["tuning_td_c"] = m.get("c_index_td")
    row["tuning_ibs"] = m.get("ibs")


def score_on_held_out(run_dir: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's model on ``held_out`` (cached in its ``metrics.json`` on resume)."""
    cached = _cached_metrics(run_dir, row["epochs"])
    if cached is not None and "held_out" in cached:
        held: dict[str, Any] = cached["held_out"]
        return held
    # once per sweep: the held-out split never takes part in the selection
    res = evaluate_run(run_dir, splits=("tuning", "held_out"))
    held = jsonable(res["held_out"])
    _write_run_metrics(run_dir, row, res["tuning"], held)
    return held


def pick_best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The selectable row with the highest validation td-C (None if no row has one).

    Selection uses the validation score only; ``held_out`` is scored afterwards, once.
    """
    scored = [r for r in rows if r["selectable"] and is_score(r["val_td_c"])]
    return max(scored, key=lambda r: r["val_td_c"]) if scored else None


def _cached_metrics(run_dir: str, epochs: int) -> dict[str, Any] | None:
    """The trial's ``metrics.json`` if it scored the same history (same number of epochs)."""
    path = os.path.join(run_dir, rundir.METRICS)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        m: dict[str, Any] = json.load(fh)
    return m if len(m.get("train", {}).get("history", [])) == epochs else None


def _write_run_metrics(
    run_dir: str, row: Mapping[str, Any], tuning: dict[str, Any], held: dict[str, Any] | None
) -> None:
    """The trial's ``metrics.json``, as ``ehrsurv finetune`` would write it."""
    metrics: dict[str, Any] = {
        "train": {
            "mode": "finetune",
            "best_epoch": row["best_epoch"],
            "best_val_score": row["val_td_c"],
            "history": run_history(run_dir),
            "tune_status": row["status"],
        },
        "tuning": tuning,
    }
    if held is not None:
        metrics["held_out"] = held
    atomic.write_json(jsonable(metrics), os.path.join(run_dir, rundir.METRICS))
