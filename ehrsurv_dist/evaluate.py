"""``ehrsurv evaluate`` / ``ehrsurv predict``: a trained run's model over whole splits.

Predictions Parquet (DESIGN.md §5): ``subject_id`` int64, ``split`` string, ``event`` bool,
``last_visit`` int32, ``risk`` float64, ``hazard`` list<float32>, ``survival`` list<float32>.
No input codes are written. Metrics are computed over each whole split (DESIGN.md §4), plus
the leakage diagnostics: the length-only baseline and a random truncation of test histories.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import load_config
from ehrsurv_dist.data import io
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.visits import concat_ranges
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.metrics import survival as M
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.launch import EXPORT
from ehrsurv_dist.train.loop import Predictions, predict

EVAL_SPLITS = (S.TUNING_SPLIT, S.HELD_OUT_SPLIT)


def load_run(run_dir: str) -> tuple[JobSpec, Vocabulary, dict[str, Any]]:
    """The run's resolved config, vocabulary (hash-checked) and exported model."""
    cfg = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg):
        raise EhrsurvError(f"{run_dir} is not a run directory (no config.yaml)")
    spec = load_config(JobSpec, cfg)
    export = modeling.load_export(os.path.join(run_dir, EXPORT))
    vocab = Vocabulary.load(os.path.join(run_dir, "vocab.json"))
    vocab.check_hash(export["vocab_hash"], source=os.path.join(run_dir, EXPORT))
    if export["mode"] != "finetune":
        raise EhrsurvError(f"{run_dir} is a {export['mode']} run: evaluate needs a finetune run")
    return spec, vocab, export


def _pipeline(
    spec: JobSpec, vocab: Vocabulary, cohort: str, require_outcomes: bool
) -> IngestPipeline:
    data = dataclasses.replace(spec.data, cohort=cohort)
    pipe = IngestPipeline(
        cohort,
        data,
        layout=modeling.layout_of(spec),  # type: ignore[arg-type]
        seed=spec.seed,
        require_outcomes=require_outcomes,
    )
    pipe.vocab = vocab
    return pipe


def predict_split(model: torch.nn.Module, pipe: IngestPipeline, split: str | None) -> Predictions:
    return predict(model, model, pipe.iter_batches(split, 0), torch.device("cpu"))


def predictions_table(p: Predictions, split: str, risk: np.ndarray) -> pa.Table:
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
    predictions of the truncated history are a prefix of the full ones (DESIGN.md §3).
    """
    rng = np.random.default_rng(seed)
    u = (rng.random(len(p.last_visit)) * (p.last_visit + 1)).astype(np.int64)  # 0..T
    starts = p.offsets[:-1]
    vals = p.values[concat_ranges(starts, u + 1)]
    off = np.concatenate([[0], np.cumsum(u + 1)])
    ev = p.event & (u == p.last_visit)
    return M.hazard_table_from_csr(vals, off), u, ev


def evaluate_run(
    run_dir: str, splits: tuple[str, ...] = EVAL_SPLITS, n_boot: int | None = None
) -> dict[str, Any]:
    """Predict and score ``splits`` of the run's cohort; writes predictions, metrics, plots."""
    from ehrsurv_dist.metrics import plots

    spec, vocab, export = load_run(run_dir)
    model = modeling.model_from_export(export)
    pipe = _pipeline(spec, vocab, spec.data.cohort, require_outcomes=True)
    train = predict_split(model, pipe, S.TRAIN_SPLIT)
    f = spec.finetune
    results: dict[str, Any] = {}
    tables = []
    for split in splits:
        p = predict_split(model, pipe, split)
        if len(p.subject_id) == 0:
            results[split] = {"n_subjects": 0, "warnings": [f"split {split} is empty"]}
            continue
        ht = M.hazard_table_from_csr(p.values, p.offsets)
        m = M.evaluate_split(
            ht,
            p.last_visit,
            p.event,
            train.last_visit,
            train.event,
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
        results[split] = M.jsonable(m)
        risk = M.risk_scores(ht, kind=f.risk_score, k=f.risk_k, n=f.risk_n)
        tables.append(predictions_table(p, split, risk))
        pdir = os.path.join(run_dir, "plots")
        os.makedirs(pdir, exist_ok=True)
        plots.plot_risk_vs_length(
            risk, p.last_visit, os.path.join(pdir, f"risk_vs_length_{split}.png"), event=p.event
        )
        if m.get("calibration"):
            plots.plot_calibration(m["calibration"], os.path.join(pdir, f"calibration_{split}.png"))
        plots.plot_survival_curves(
            ht, p.last_visit, os.path.join(pdir, f"survival_{split}.png"), event=p.event
        )
    if tables:
        io.write_parquet_atomic(
            pa.concat_tables(tables), os.path.join(run_dir, "predictions", "predictions.parquet")
        )
    return results


def predict_cohort(run_dir: str, cohort: str, out: str) -> int:
    """Predictions for every subject of another cohort (no metrics); returns the count."""
    spec, vocab, export = load_run(run_dir)
    model = modeling.model_from_export(export)
    pipe = _pipeline(spec, vocab, cohort, require_outcomes=False)
    p = predict_split(model, pipe, None)
    f = spec.finetune
    ht = M.hazard_table_from_csr(p.values, p.offsets)
    risk = M.risk_scores(ht, kind=f.risk_score, k=f.risk_k, n=f.risk_n)
    io.write_parquet_atomic(predictions_table(p, "all", risk), out)
    return len(p.subject_id)
