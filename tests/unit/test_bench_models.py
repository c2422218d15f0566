"""The model and loss benchmark rows are valid jobs; the summary table shows what ran."""

from __future__ import annotations

import pytest

from ehrsurv_dist.bench.models import loss_rows, model_rows, summary_table
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec


@pytest.mark.parametrize("row", model_rows() + loss_rows(), ids=lambda r: r.name)
def test_every_row_is_a_valid_job(row) -> None:
    over = [*row.overrides, ("data.cohort", "/c")]
    if row.pretrained:
        over.append(("finetune.init", "/pre"))
    spec = load_config(JobSpec, None, over)
    assert spec.data.cohort == "/c"


def test_rows_cover_the_seed_comparisons() -> None:
    models = {r.name: r for r in model_rows()}
    specs = {n: load_config(JobSpec, None, list(r.overrides)) for n, r in models.items()}
    strategies = {(s.finetune.strategy, models[n].pretrained) for n, s in specs.items()}
    for strategy in ("frozen", "lora", "full"):
        assert (strategy, True) in strategies and (strategy, False) in strategies
    assert {s.model.arch for s in specs.values()} == {"behrt", "hierarchical", "lstm"}
    assert {s.model.attention for s in specs.values()} == {"visit_causal", "bidirectional"}
    assert specs["behrt_lora_pre"].finetune.lora_rank == 16
    losses = [load_config(JobSpec, None, list(r.overrides)).finetune for r in loss_rows()]
    assert sorted(f.lambda_rank for f in losses if f.loss == "hybrid") == [
        0.01,
        0.05,
        0.1,
        0.2,
        0.5,
    ]
    assert {f.rank_loss for f in losses if f.loss == "rank"} == {"hinge", "logistic"}
    assert {f.loss for f in losses} == {"nll", "rank", "hybrid", "cox"}


def test_summary_table_formats_rows_and_missing_values() -> None:
    rows = [
        {"name": "oracle", "label": "oracle", "c_index_td": 0.72, "c_index_harrell": 0.76},
        {
            "name": "m",
            "label": "model",
            "c_index_td": 0.68123,
            "c_index_td_ci": [0.631, 0.724],
            "c_index_harrell": 0.66,
            "ibs": 0.24,
            "ece": 0.16,
            "trainable_params": 523521,
            "wall_s": 95.2,
            "epochs_to_best": 7,
            "train_val_gap": 0.05,
            "length_only_auc": 0.61,
            "truncated_c_index_td": 0.7,
        },
    ]
    lines = summary_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| oracle | 0.7200 | 0.7600 | – |")
    assert (
        "| model | 0.6812 [0.631, 0.724] | 0.6600 | 0.2400 | 0.160 | 523,521 | 95 | 7 |"
        in (lines[3])
    )
