"""Tasks and loop pieces (pure torch, no Ray): losses route correctly, predictions are exact."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models import behrt_tiny, build_pretraining_model, build_survival_model
from ehrsurv_dist.models.builders import example_flat_batch
from ehrsurv_dist.objectives import cox as C
from ehrsurv_dist.objectives import survival as L
from ehrsurv_dist.ragged import Ragged
from ehrsurv_dist.train.engine import EngineConfig, build_engine
from ehrsurv_dist.train.loop import (
    LoopState,
    Predictions,
    predict,
    train_epoch,
)
from ehrsurv_dist.train.steplog import EpochCounters, thread_counters
from ehrsurv_dist.train.tasks import PretrainTask, SurvivalTask, build_task

VOCAB = 97


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_survival_model(behrt_tiny(VOCAB, 64)).eval()


def test_build_task_keeps_the_job_names_of_the_risk_score() -> None:
    """``finetune.risk_score`` / ``risk_k`` / ``risk_n`` reach the task under the same names."""
    over = ["finetune.loss=hybrid", "finetune.risk_score=horizon", "finetune.risk_k=7"]
    task = build_task(load_config(JobSpec, None, [*over, "finetune.risk_n=3"]), "finetune", VOCAB)
    assert isinstance(task, SurvivalTask)
    assert (task.risk_score, task.risk_k, task.risk_n) == ("horizon", 7, 3)


def test_survival_task_losses_match_objectives() -> None:
    with torch.no_grad():
        m = _model()
        b = example_flat_batch(VOCAB, batch_size=13, seed=1)
        out = m(b[S.CODES], b[S.AGES], b[S.VISIT_IDS], b[S.ATTENTION_MASK])
        nll = L.discrete_time_nll(out.logits, b[S.LAST_VISIT], b[S.EVENT], out.visit_mask)
        loss, comps = SurvivalTask("nll")(m, m, b)
        assert float(loss) == pytest.approx(float(nll), abs=1e-7) and comps == {"nll": float(nll)}
        hyb, parts = L.hybrid_survival_loss(
            out.logits, b[S.LAST_VISIT], b[S.EVENT], out.visit_mask, lambda_rank=0.2
        )
        loss, comps = SurvivalTask("hybrid", lambda_rank=0.2)(m, m, b)
        assert float(loss) == pytest.approx(float(hyb), abs=1e-7)
        assert comps["rank"] == pytest.approx(float(parts["rank"])) and comps["lambda_rank"] == 0.2
        loss, _ = SurvivalTask("rank")(m, m, b)
        assert float(loss) == pytest.approx(float(parts["rank"]), abs=1e-7)
        cox = C.cox_partial_likelihood(
            C.cox_log_risk(out.logits, out.visit_mask), b[S.LAST_VISIT], b[S.EVENT]
        )
        loss, _ = SurvivalTask("cox")(m, m, b)
        assert float(loss) == pytest.approx(float(cox), abs=1e-7)


def test_curriculum_lambda() -> None:
    t = SurvivalTask("hybrid", lambda_rank=0.4, curriculum_epochs=4)
    assert [t.lambda_at(e) for e in (0, 2, 4, 9)] == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_pretrain_task_nvp_uses_unmasked_codes() -> None:
    torch.manual_seed(0)
    m = build_pretraining_model(behrt_tiny(VOCAB, 64)).eval()
    b = example_flat_batch(VOCAB, batch_size=5, seed=2)
    labels = torch.full_like(b[S.CODES], S.IGNORE_INDEX)
    masked = b[S.CODES].clone()
    pos = b[S.ATTENTION_MASK].nonzero()[:3]
    for r, c in pos.tolist():
        labels[r, c] = masked[r, c]
        masked[r, c] = S.MASK_ID
    clean = {**b, S.MLM_LABELS: torch.full_like(labels, S.IGNORE_INDEX)}
    corrupt = {**b, S.CODES: masked, S.MLM_LABELS: labels}
    task = PretrainTask("nvp", vocab_size=VOCAB)
    # the NVP targets are the same; only the inputs differ
    from ehrsurv_dist.objectives.pretraining import build_nvp_targets

    t_clean, _ = build_nvp_targets(b[S.CODES], b[S.VISIT_IDS], b[S.ATTENTION_MASK], VOCAB)
    restored = masked.where(labels == S.IGNORE_INDEX, labels)
    assert torch.equal(restored, b[S.CODES])
    t_restored, _ = build_nvp_targets(restored, b[S.VISIT_IDS], b[S.ATTENTION_MASK], VOCAB)
    assert torch.equal(t_clean, t_restored)
    l1, c1 = task(m, m, clean)
    l2, c2 = PretrainTask("joint", vocab_size=VOCAB)(m, m, corrupt)
    assert math.isfinite(float(l1.detach())) and set(c2) == {"mlm", "nvp"}


def test_predict_returns_real_visit_hazards_in_subject_order() -> None:
    m = _model()
    b = example_flat_batch(VOCAB, batch_size=13, seed=3)
    nb = {k: v.numpy() for k, v in b.items()}
    nb[S.SUBJECT] = np.arange(13)[::-1].copy()
    p = predict(m, m, [nb], torch.device("cpu"))
    assert p.subject_id.tolist() == list(range(13))
    out = m(b[S.CODES], b[S.AGES], b[S.VISIT_IDS], b[S.ATTENTION_MASK])
    h = torch.sigmoid(out.logits).detach().numpy()
    for i, sid in enumerate(p.subject_id):
        row = 12 - int(sid)
        np.testing.assert_allclose(p.hazards(i), h[row, : int(b[S.LAST_VISIT][row]) + 1], atol=1e-7)
    assert m.training is False


def test_predictions_concat_sorts_and_keeps_segments() -> None:
    a = Predictions(
        np.array([5, 1]),
        np.array([True, False]),
        np.array([1, 0]),
        Ragged(np.array([0.1, 0.2, 0.3], np.float32), np.array([0, 2, 3])),
    )
    b = Predictions(
        np.array([3]),
        np.array([True]),
        np.array([2]),
        Ragged(np.array([0.4, 0.5, 0.6], np.float32), np.array([0, 3])),
    )
    c = Predictions.concat([a, b])
    assert c.subject_id.tolist() == [1, 3, 5]
    expected = [[0.3], [0.4, 0.5, 0.6], [0.1, 0.2]]
    for i in range(3):
        np.testing.assert_allclose(c.hazards(i), expected[i], rtol=1e-6)
    assert c.event.tolist() == [False, True, True] and c.last_visit.tolist() == [0, 2, 1]
    # the CSR attributes evaluate.py reads
    np.testing.assert_allclose(c.values, [0.3, 0.4, 0.5, 0.6, 0.1, 0.2], rtol=1e-6)
    assert c.offsets.tolist() == [0, 1, 4, 6] and c.values.dtype == np.float32
    empty = Predictions.concat([])
    assert len(empty.subject_id) == 0 and empty.offsets.tolist() == [0]


def test_loop_state_early_stopping_round_trip() -> None:
    s = LoopState()
    seq = [0.6, 0.62, 0.61, 0.615, 0.63, 0.5, 0.5]
    improved = []
    for v in seq:
        improved.append(s.update(v))
        s.epoch += 1
    assert improved == [True, True, False, False, True, False, False]
    assert s.best_epoch == 4 and s.bad_epochs == 2 and s.should_stop(2) and not s.should_stop(3)
    assert LoopState.from_dict(s.to_dict()) == s
    lo = LoopState()
    assert lo.update(2.0, higher_is_better=False) and lo.update(1.5, higher_is_better=False)
    assert not lo.update(float("nan"))


def test_synchronized_single_rank_keeps_whole_groups() -> None:
    from ehrsurv_dist.train.loop import synchronized

    batches = [{"i": np.array([i])} for i in range(7)]
    assert [int(b["i"][0]) for b in synchronized(batches, 1)] == list(range(7))
    assert [int(b["i"][0]) for b in synchronized(batches, 3)] == list(range(6))


def test_synchronized_stops_after_max_groups_without_reading_further() -> None:
    from ehrsurv_dist.train.loop import synchronized

    taken = []

    def source() -> Iterator[dict[str, np.ndarray]]:
        for i in range(100):
            taken.append(i)
            yield {"i": np.array([i])}

    got = [int(b["i"][0]) for b in synchronized(source(), 2, max_groups=3)]
    assert got == list(range(6))  # 3 whole groups of 2 (train.max_steps_per_epoch=3)
    assert taken == list(range(6))  # and nothing read past the bound
    assert [int(b["i"][0]) for b in synchronized(source(), 4, max_groups=100)] == list(range(100))
    assert len([*synchronized(source(), 1, max_groups=None)]) == 100


def test_train_epoch_times_every_step() -> None:
    model = build_survival_model(behrt_tiny(VOCAB, 64))
    engine = build_engine(model, EngineConfig(engine="torch", lr=1e-3), total_steps=3)
    batches = [example_flat_batch(VOCAB, batch_size=2, seed=s) for s in range(3)]
    counters = EpochCounters()
    res = train_epoch(engine, SurvivalTask(), batches, torch.device("cpu"), 0, hooks=[counters])
    m = res.measures
    assert res.steps == 3 and len(m["step_seconds"]) == 3
    assert all(t > 0 for t in m["step_seconds"])
    # the steps are disjoint slices of the epoch (each includes its wait for the batch)
    assert sum(m["step_seconds"]) <= res.seconds
    assert sum(m["step_seconds"]) <= m["seconds"]
    assert sum(m["step_seconds"]) >= res.data_wait_seconds
    # the loop thread's CPU time: positive, and it cannot run longer than the wall clock
    assert 0 < m["cpu_seconds"] <= m["seconds"]
    # its counters are per epoch, not since the thread started
    before = thread_counters()
    assert all(0 <= n <= b for n, b in zip(
        (*m["switches"], m["page_faults"]), before, strict=True
    ))  # fmt: skip
    # without hooks the loop measures nothing beyond its training facts
    plain = train_epoch(engine, SurvivalTask(), batches, torch.device("cpu"), 1)
    assert plain.measures == {} and plain.steps == 3


def test_an_epoch_without_a_step_warns_and_every_epoch_says_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's epoch (``worker.run_epoch``, no Ray): a rank with fewer batches than one
    step's ``train.engine.grad_accum`` trains nothing and says so; at INFO every epoch gives
    one line of counts and timings."""
    from types import SimpleNamespace

    from ehrsurv_dist.train import worker
    from ehrsurv_dist.train.engine import EngineConfig, build_engine

    task = build_task(load_config(JobSpec, None, []), "finetune", VOCAB)
    batches = [
        {k: v.numpy() for k, v in example_flat_batch(VOCAB, batch_size=4, seed=s).items()}
        for s in range(3)
    ]
    cpu = torch.device("cpu")
    rc = SimpleNamespace(
        rank=1,
        world=2,
        device=cpu,
        bspec=SimpleNamespace(batch_size=4),
        spec=load_config(JobSpec, None, []),
    )
    for accum, steps in ((4, 0), (1, 3)):
        engine = build_engine(
            _model().train(), EngineConfig(engine="torch", grad_accum=accum), 3, device=cpu
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ehrsurv_dist.train.worker"):
            res = worker.run_epoch(rc, engine, task, iter(batches), 5, [])
        assert res.steps == steps
        said = [(r.levelname, r.getMessage()) for r in caplog.records]
        warned = [m for lvl, m in said if lvl == "WARNING"]
        lines = [m for lvl, m in said if lvl == "INFO"]
        assert len(lines) == 1 and lines[0].startswith(
            f"epoch 5, rank 1/2: train loss {res.loss:.4f}, {steps} steps, "
        )
        if steps:
            assert warned == []
        else:
            assert warned == [
                "epoch 5, rank 1: no training step (this rank read 3 train batch(es) of "
                "data.batch_size=4; a step takes train.engine.grad_accum=4 on every rank), so the "
                "weights did not change this epoch: lower train.engine.grad_accum, "
                "data.batch_size or train.num_workers, or use a larger cohort"
            ]


def test_a_bounded_epoch_stops_after_its_steps_and_closes_its_reader() -> None:
    """``train.max_steps_per_epoch``: the worker's epoch takes that many optimizer steps (of
    grad_accum batches each), reads no further, and closes its batch source."""
    from types import SimpleNamespace

    from ehrsurv_dist.train import worker
    from ehrsurv_dist.train.engine import EngineConfig, build_engine

    task = build_task(load_config(JobSpec, None, []), "finetune", VOCAB)
    cpu = torch.device("cpu")
    read: list[int] = []
    closed: list[bool] = []

    def source() -> Iterator[dict[str, np.ndarray]]:
        try:
            for s in range(50):
                read.append(s)
                yield {
                    k: v.numpy() for k, v in example_flat_batch(VOCAB, batch_size=4, seed=s).items()
                }
        finally:
            closed.append(True)

    spec = load_config(JobSpec, None, ["train.max_steps_per_epoch=3"])
    rc = SimpleNamespace(
        rank=0, world=1, device=cpu, bspec=SimpleNamespace(batch_size=4), spec=spec
    )
    engine = build_engine(_model().train(), EngineConfig(engine="torch", grad_accum=2), 3, cpu)
    res = worker.run_epoch(rc, engine, task, source(), 0, [])
    assert res.steps == 6 and engine.global_step == 3  # 3 optimizer steps of 2 batches
    assert read == list(range(6)) and closed == [True]
