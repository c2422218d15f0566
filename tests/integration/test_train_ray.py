"""End to end on a real local Ray: Ray Train + DeepSpeed on CPU, 2 workers, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.cohort import load_cohort
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.evaluate import _pipeline, _Scoring, evaluate_run, load_run, predict_cohort
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.launch import run_training

pytestmark = pytest.mark.integration

TINY = [
    "model.size=tiny",
    "data.batch_size=16",
    "data.max_seq_len=96",
    "train.num_workers=2",
    "train.engine.lr=0.001",
    "eval.n_boot=20",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("train") / "cohort")
    synthesize(out, "smoke", seed=3, signal=3.0)
    return out


def _spec(cohort: str, *more: str) -> JobSpec:
    return load_config(JobSpec, None, [*TINY, *more, ("data.cohort", cohort)])


@pytest.fixture(scope="module")
def pretrained(cohort: str, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    out = str(tmp_path_factory.mktemp("pre") / "run")
    run_training(_spec(cohort, "train.epochs=1", "train.engine.zero_stage=2"), "pretrain", out)
    return out


def test_finetune_zero1_then_evaluate_matches_sksurv(
    cohort: str, tmp_path: Path, ray_local: None
) -> None:
    from sksurv.metrics import concordance_index_censored

    out = str(tmp_path / "ft")
    spec = _spec(cohort, "train.epochs=2", "train.engine.zero_stage=1", "finetune.strategy=full")
    res = run_training(spec, "finetune", out)
    assert [h["epoch"] for h in res.history] == [0, 1]
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    assert os.path.exists(res.export)
    metrics = evaluate_run(out, n_boot=0)
    held = metrics[S.HELD_OUT_SPLIT]
    pred = pq.read_table(os.path.join(out, "predictions", "predictions.parquet")).to_pandas()
    h = pred[pred[S.SPLIT] == S.HELD_OUT_SPLIT]
    assert held["n_subjects"] == len(h) > 0
    time = h[S.LAST_VISIT].to_numpy() + 0.5 * h[S.EVENT].to_numpy()
    expected = concordance_index_censored(h[S.EVENT].to_numpy(), time, h["risk"].to_numpy())[0]
    assert held["c_index_harrell"] == pytest.approx(expected, abs=1e-12)
    # predictions: hazard and survival lists of length T + 1, survival = cumprod(1 - h)
    for _, row in h.head(20).iterrows():
        hz = np.asarray(row["hazard"], dtype=np.float64)
        assert len(hz) == row[S.LAST_VISIT] + 1
        np.testing.assert_allclose(row["survival"], np.cumprod(1 - hz), rtol=1e-5)
    # Ray Data inference (actors holding the model) == the single-process reference path
    rspec, vocab, export = load_run(out)
    pipe = _pipeline(rspec, vocab, cohort, require_outcomes=True)
    with _Scoring(rspec, out, export, use_ray=True) as on_ray:
        ray_pred, ray_train = on_ray(pipe, S.HELD_OUT_SPLIT), on_ray.labels(pipe, S.TRAIN_SPLIT)
    with _Scoring(rspec, out, export, use_ray=False) as single:
        ref_pred, ref_train = single(pipe, S.HELD_OUT_SPLIT), single.labels(pipe, S.TRAIN_SPLIT)
    np.testing.assert_array_equal(ray_pred.subject_id, ref_pred.subject_id)
    np.testing.assert_array_equal(ray_pred.offsets, ref_pred.offsets)
    np.testing.assert_allclose(ray_pred.values, ref_pred.values, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ray_pred.subject_id, h[S.SUBJECT_ID].to_numpy())
    for a, b in zip(ray_train, ref_train, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(ray_train[0]) == int((load_cohort(cohort).split == S.TRAIN_SPLIT).sum())
    # predict: every subject of a cohort, no input codes in the output
    pred_path = str(tmp_path / "pred.parquet")
    rep = predict_cohort(out, cohort, pred_path)
    t = pq.read_table(pred_path)
    assert rep.subjects == t.num_rows == len(load_cohort(cohort).split)
    assert rep.unknown_tokens == 0 < rep.tokens  # the run's own cohort: every code is known
    assert set(t.column_names) == {
        S.SUBJECT_ID,
        S.SPLIT,
        S.EVENT,
        S.LAST_VISIT,
        "risk",
        "hazard",
        "survival",
    }
    # the run directory refuses another run
    with pytest.raises(OutputError, match="another run"):
        run_training(_spec(cohort, "train.epochs=3"), "finetune", out)


def test_init_loads_the_pretrained_encoder(
    cohort: str, pretrained: str, tmp_path: Path, ray_local: None
) -> None:
    out = str(tmp_path / "ft_init")
    spec = _spec(
        cohort, "train.epochs=1", "finetune.strategy=frozen", ("finetune.init", pretrained)
    )
    run_training(spec, "finetune", out)
    pre = modeling.load_export(os.path.join(pretrained, "model"))
    ft = modeling.load_export(os.path.join(out, "model"))
    enc = [k for k in pre["state_dict"] if k.startswith("encoder.")]
    assert enc
    # frozen: the fine-tuned encoder is exactly the pretrained one; the head trained
    for k in enc:
        assert torch.equal(pre["state_dict"][k], ft["state_dict"][k]), k
    assert ft["vocab_hash"] == pre["vocab_hash"]
    with open(os.path.join(out, "config.yaml")) as f:
        assert pretrained in f.read()


@pytest.fixture(scope="module")
def uninterrupted(
    cohort: str, tmp_path_factory: pytest.TempPathFactory, ray_local: None
) -> list[dict]:
    out = str(tmp_path_factory.mktemp("full") / "run")
    return run_training(
        _spec(cohort, "train.epochs=3", "train.patience=0"), "finetune", out
    ).history


def _same_curve(got: list[dict], want: list[dict]) -> None:
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want] == [0, 1, 2]
    np.testing.assert_allclose(
        [h["train_loss"] for h in got], [h["train_loss"] for h in want], rtol=1e-6
    )
    np.testing.assert_allclose(
        [h["val_c_index_td"] for h in got], [h["val_c_index_td"] for h in want], rtol=1e-9
    )


def test_driver_relaunch_resumes_the_same_curve(
    cohort: str,
    uninterrupted: list[dict],
    tmp_path: Path,
    ray_local: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that dies after epoch 1 (no retries), re-launched as is: epochs continue exactly."""
    from ehrsurv_dist.errors import EhrsurvError

    out = str(tmp_path / "b")
    spec = _spec(cohort, "train.epochs=3", "train.patience=0", "train.max_failures=0")
    monkeypatch.setenv("EHRSURV_FAULT_AFTER_EPOCH", "1")
    with pytest.raises(EhrsurvError, match="injected fault"):
        run_training(spec, "finetune", out)
    monkeypatch.delenv("EHRSURV_FAULT_AFTER_EPOCH")
    resumed = run_training(spec, "finetune", out)
    _same_curve(resumed.history, uninterrupted)


def test_worker_failure_is_recovered(
    cohort: str,
    uninterrupted: list[dict],
    tmp_path: Path,
    ray_local: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that dies mid-run is replaced (max_failures=1) and training finishes the curve."""
    out = str(tmp_path / "c")
    spec = _spec(cohort, "train.epochs=3", "train.patience=0", "train.max_failures=1")
    monkeypatch.setenv("EHRSURV_FAULT_AFTER_EPOCH", "0")
    res = run_training(spec, "finetune", out)
    _same_curve(res.history, uninterrupted)


def test_one_worker_kept_blocks_resume_the_curve_of_ray_data_reads(
    cohort: str, tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 worker: the train and validation blocks kept after the first epoch
    (data.worker_cache_mb) train exactly the curve of reading them through Ray Data every epoch
    (data.worker_cache_mb=0), and a run that dies after epoch 1 and is re-launched (its blocks
    read again, then kept again) continues that curve."""
    from ehrsurv_dist.errors import EhrsurvError

    common = ("train.num_workers=1", "train.epochs=3", "train.patience=0", "train.max_failures=0")
    reference = run_training(
        _spec(cohort, *common, "data.worker_cache_mb=0"), "finetune", str(tmp_path / "ray_data")
    ).history
    kept = _spec(cohort, *common)
    assert kept.data.worker_cache_mb > 0 and kept.data.cache
    out = str(tmp_path / "kept")
    monkeypatch.setenv("EHRSURV_FAULT_AFTER_EPOCH", "1")
    with pytest.raises(EhrsurvError, match="injected fault"):
        run_training(kept, "finetune", out)
    monkeypatch.delenv("EHRSURV_FAULT_AFTER_EPOCH")
    _same_curve(run_training(kept, "finetune", out).history, reference)


def _unit_order_and_subjects(ds: object) -> tuple[list[int], list[int]]:
    units: list[int] = []
    subjects: list[int] = []
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # type: ignore[attr-defined]
        for u in b["unit"].to_pylist():
            if not units or u != units[-1]:
                units.append(u)
        subjects += b[S.SUBJECT_ID].to_pylist()
    return units, sorted(subjects)


def test_bounded_epochs_read_the_units_in_a_new_order_every_epoch(
    tmp_path: Path, ray_local: None
) -> None:
    """train.max_steps_per_epoch reads the train split's blocks in a new random order every
    execution (epoch), streamed or cached, reproducibly from the seed, every subject once."""
    from ehrsurv_dist.config import DataConfig
    from ehrsurv_dist.data.pipeline import IngestPipeline, shuffled_blocks
    from ehrsurv_dist.data.synth_long import synthesize_long

    cohort = str(tmp_path / "long")
    synthesize_long(cohort, subjects=48, seed=2, shards=12, workers=1)  # 12 files: 12 units
    pipe = IngestPipeline(cohort, DataConfig(cohort=cohort), validation_cache="none")
    pipe.fit()
    plain = _unit_order_and_subjects(pipe.dataset(S.TRAIN_SPLIT).materialize())
    assert len(plain[0]) >= 8
    for ds in (
        pipe.dataset(S.TRAIN_SPLIT, block_order_seed=7),  # streamed: the read tasks reordered
        shuffled_blocks(pipe.dataset(S.TRAIN_SPLIT).materialize(), 7),  # cached: the blocks
    ):
        first, second = _unit_order_and_subjects(ds), _unit_order_and_subjects(ds)
        assert first[1] == second[1] == plain[1]  # every subject, once per epoch
        assert sorted(first[0]) == sorted(plain[0])
        assert first[0] != second[0]  # a new order at the next execution


def test_a_cached_split_keeps_its_units_in_plan_order(tmp_path: Path, ray_local: None) -> None:
    """data.cache: the kept blocks come in the plan's unit order, not in the order the map
    tasks finished (which differs between runs, and between a run and its resume)."""
    from ehrsurv_dist.config import DataConfig
    from ehrsurv_dist.data.pipeline import IngestPipeline, materialized_in_order
    from ehrsurv_dist.data.synth_long import synthesize_long

    cohort = str(tmp_path / "long")
    synthesize_long(cohort, subjects=48, seed=2, shards=12, workers=1)  # 12 files: 12 units
    pipe = IngestPipeline(cohort, DataConfig(cohort=cohort), validation_cache="none")
    pipe.fit()
    plan_order = [u.unit_id for u in pipe.plan.units]
    for _ in range(3):
        units, subjects = _unit_order_and_subjects(
            materialized_in_order(pipe.dataset(S.TRAIN_SPLIT))
        )
        assert len(units) >= 8 and units == [u for u in plan_order if u in set(units)]
        assert len(subjects) == len(set(subjects))


def test_bounded_streamed_epochs_train_their_steps_and_finish(
    cohort: str, tmp_path: Path, ray_local: None
) -> None:
    """2 workers, data.cache=false (streamed every epoch), 2 steps per epoch: each epoch takes
    exactly its bounded steps on both ranks, reads a fraction of the split, and the run ends
    with its model exported."""
    spec = _spec(
        cohort,
        "train.epochs=2",
        "train.patience=0",
        "train.max_steps_per_epoch=2",
        "data.cache=false",
        "finetune.strategy=full",
    )
    res = run_training(spec, "finetune", str(tmp_path / "bounded"))
    assert [h["epoch"] for h in res.history] == [0, 1]
    for h in res.history:
        assert h["steps"] == 2 * 2  # 2 steps of 1 batch on each of 2 ranks
        assert np.isfinite(h["train_loss"]) and np.isfinite(h["val_score"])
    assert os.path.exists(res.export)
