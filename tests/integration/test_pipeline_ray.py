"""The Ray Data ingest path against the single-process reference path, on real local Ray.

Bit-identical tensors per subject (and the same batches), for subject-complete shards (no
shuffle) and for subjects that span shards (hash-partitioned fallback), checked against the
Foundation's single-process ``load_cohort`` too.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data.cohort import load_cohort
from ehrsurv_dist.data.collate import BatchStats
from ehrsurv_dist.data.layouts import Limits, flatten, to_hierarchical
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.plan import plan_units, task_groups
from ehrsurv_dist.data.shards import KeptShard, iter_shard_batches
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import write_cohort

pytestmark = pytest.mark.integration

Row = tuple[bytes, ...]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("ingest") / "smoke")
    synthesize(out, "smoke", subjects=300, shards=2, seed=7)
    return out


@pytest.fixture(scope="module")
def spanning(smoke: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The smoke cohort with every subject's rows dealt over 3 shards (row i -> shard i % 3)."""
    out = str(tmp_path_factory.mktemp("ingest") / "spanning")
    os.makedirs(os.path.join(out, S.DATA_SUBDIR))
    os.makedirs(os.path.join(out, "metadata"))
    t = pa.concat_tables(
        [
            pq.read_table(f)
            for f in sorted(glob.glob(os.path.join(smoke, S.DATA_SUBDIR, "*.parquet")))
        ]
    )
    idx = np.arange(t.num_rows)
    for k in range(3):
        pq.write_table(
            t.take(pa.array(idx[idx % 3 == k])), os.path.join(out, S.DATA_SUBDIR, f"s{k}.parquet")
        )
    for name in (S.OUTCOMES_FILE, S.SUBJECT_SPLITS_PATH):
        pq.write_table(pq.read_table(os.path.join(smoke, name)), os.path.join(out, name))
    return out


def _collect(batches: Any) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in b.items()} for b in batches]


def _per_subject(batches: list[dict[str, np.ndarray]]) -> dict[int, Row]:
    """subject_id -> bytes of its real tokens and labels (independent of padding width)."""
    out: dict[int, Row] = {}
    for b in batches:
        if S.ATTENTION_MASK in b:
            n = b[S.ATTENTION_MASK].sum(1)
            tok = [S.CODES, S.AGES, S.VISIT_IDS] + ([S.MLM_LABELS] if S.MLM_LABELS in b else [])
            for r, s in enumerate(b[S.SUBJECT]):
                out[int(s)] = tuple(b[k][r, : n[r]].tobytes() for k in tok) + tuple(
                    b[k][r].tobytes() for k in (S.LAST_VISIT, S.EVENT, S.NUM_VISITS)
                )
        else:
            for r, s in enumerate(b[S.SUBJECT]):
                nv = int(b[S.NUM_VISITS][r])
                cm = b[S.CODE_MASK][r, :nv]
                out[int(s)] = (
                    b[S.CODES][r, :nv][cm].tobytes(),
                    cm.sum(1).tobytes(),
                    b[S.AGES][r, :nv].tobytes(),
                    b[S.TIME_DELTAS][r, :nv].tobytes(),
                    b[S.LAST_VISIT][r].tobytes(),
                    b[S.EVENT][r].tobytes(),
                )
    return out


def _batch_sets(batches: list[dict[str, np.ndarray]]) -> list[tuple[int, ...]]:
    return sorted(tuple(sorted(int(s) for s in b[S.SUBJECT])) for b in batches)


def test_fit_on_ray_equals_single_process(ray_local: None, smoke: str) -> None:
    # caches off: the Ray fit must scan, not reuse the single-process fit's totals
    pipe = IngestPipeline(smoke, rows_per_unit=500, validation_cache="none")
    assert pipe.plan.mode == "row_groups" and pipe.plan.num_units >= 2
    single = pipe.fit()
    on_ray = pipe.fit(use_ray=True)
    assert on_ray.vocab == single.vocab and on_ray.vocab.hash == single.vocab.hash
    assert on_ray.stats == single.stats
    assert on_ray.rejects.equals(single.rejects)
    for split in S.SPLITS:
        assert on_ray.code_counts[split].equals(single.code_counts[split])
    # the vocabulary is fitted on train only
    ref = load_cohort(smoke)
    n_train = int((ref.split == S.TRAIN_SPLIT).sum())
    assert single.stats[S.TRAIN_SPLIT]["subjects"] == n_train
    assert sum(single.vocab.counts or ()) == single.stats[S.TRAIN_SPLIT]["tokens"]


def test_flat_ray_batches_are_bit_identical_to_single_process(ray_local: None, smoke: str) -> None:
    data = DataConfig(cohort=smoke, batch_size=16, max_seq_len=24, max_visits=10)
    pipe = IngestPipeline(
        smoke, data, rows_per_unit=500, mlm=True, seed=3, check_batches=-1, pad_multiple=8
    )
    pipe.fit()
    ds = pipe.dataset(S.TRAIN_SPLIT)  # epoch-independent: the consumer buckets and pads
    seen = []
    for epoch in (0, 1):
        stats = BatchStats()
        consumer = _collect(pipe.iter_ray_batches(S.TRAIN_SPLIT, epoch, dataset=ds, stats=stats))
        shard = _collect(iter_shard_batches(ds.iterator(), pipe.batch_spec(), epoch))
        single = _collect(pipe.iter_batches(S.TRAIN_SPLIT, epoch))
        assert stats.checked_batches == len(consumer)  # every batch passed the contract checks
        assert _batch_sets(shard) == _batch_sets(single)
        assert _per_subject(shard) == _per_subject(single)
        assert _batch_sets(consumer) == _batch_sets(single)
        assert _per_subject(consumer) == _per_subject(single)
        assert all(b[S.CODES].shape[1] % 8 == 0 or b[S.CODES].shape[1] == 24 for b in consumer)
        seen.append(_per_subject(single))
    assert seen[0] != seen[1]  # fresh masks every epoch

    # against the Foundation's reference: load_cohort -> flatten (no MLM: the raw codes)
    ref = load_cohort(smoke)
    sv = ref.subset(S.TRAIN_SPLIT)
    assert pipe.vocab is not None
    ft = flatten(sv, pipe.vocab.lookup(sv.codes)[0], Limits(max_seq_len=24, max_visits=10))
    plain = IngestPipeline(smoke, data, rows_per_unit=500, report=pipe.report)
    plain.vocab = pipe.vocab
    got = _per_subject(_collect(plain.iter_ray_batches(S.TRAIN_SPLIT, 0)))
    assert len(got) == sv.num_subjects
    for i in range(sv.num_subjects):
        a, b = int(ft.offsets[i]), int(ft.offsets[i + 1])
        exp = (
            ft.codes[a:b].astype(np.int64).tobytes(),
            ft.ages[a:b].tobytes(),
            ft.visit_ids[a:b].astype(np.int64).tobytes(),
            np.int64(ft.last_visit[i]).tobytes(),
            np.bool_(ft.event[i]).tobytes(),
            np.int64(ft.last_visit[i] + 1).tobytes(),
        )
        assert got[int(sv.subject_id[i])] == exp


def test_kept_shard_reads_through_ray_data_once(ray_local: None, smoke: str) -> None:
    data = DataConfig(cohort=smoke, batch_size=16, max_seq_len=24, max_visits=10)
    pipe = IngestPipeline(smoke, data, rows_per_unit=500, mlm=True, seed=3, check_batches=-1)
    pipe.fit()
    ds = pipe.dataset(S.TRAIN_SPLIT).materialize()  # as launch.py caches a split
    spec = pipe.batch_spec()
    kept = KeptShard(ds.iterator(), max_bytes=2**30)
    too_big = KeptShard(ds.iterator(), max_bytes=1)  # every block is larger: never kept
    off = KeptShard(ds.iterator(), max_bytes=0)
    per_epoch = []
    for epoch in (0, 1, 2):
        ref = _collect(iter_shard_batches(ds.iterator(), spec, epoch))
        for shard in (kept, too_big, off):
            got = _collect(shard.batches(spec, epoch))
            assert _batch_sets(got) == _batch_sets(ref)
            assert _per_subject(got) == _per_subject(ref)  # tokens, MLM masks and labels
        per_epoch.append(_per_subject(ref))
    assert per_epoch[1] != per_epoch[2]  # kept blocks still give each epoch its own masks
    assert kept.kept and kept.reads == 1  # epochs 1 and 2 came from the kept blocks
    assert not too_big.kept and too_big.reads == 3
    assert not off.kept and off.reads == 3
    # a read that stops early keeps nothing: the next read goes through Ray Data again
    partial = KeptShard(ds.iterator(), max_bytes=2**30)
    it = partial.batches(spec, 0)
    next(it)
    del it
    assert not partial.kept
    assert _per_subject(_collect(partial.batches(spec, 0))) == per_epoch[0] and partial.kept
    assert partial.reads == 2
    with pytest.raises(ValueError, match="max_bytes"):
        KeptShard(ds.iterator(), max_bytes=-1)


def test_hierarchical_ray_equals_single_process(ray_local: None, smoke: str) -> None:
    data = DataConfig(cohort=smoke, batch_size=8, max_visits=6, max_codes_per_visit=3)
    pipe = IngestPipeline(smoke, data, layout="hierarchical", rows_per_unit=500, check_batches=-1)
    pipe.fit()
    ray_b = _collect(pipe.iter_ray_batches(S.HELD_OUT_SPLIT, 2))
    one_b = _collect(pipe.iter_batches(S.HELD_OUT_SPLIT, 2))
    assert _batch_sets(ray_b) == _batch_sets(one_b)
    assert _per_subject(ray_b) == _per_subject(one_b)
    ref = load_cohort(smoke).subset(S.HELD_OUT_SPLIT)
    assert pipe.vocab is not None
    vt = to_hierarchical(
        ref, pipe.vocab.lookup(ref.codes)[0], Limits(max_visits=6, max_codes_per_visit=3)
    )
    got = _per_subject(ray_b)
    for i in range(vt.num_subjects):
        c0, c1 = vt.code_offsets[vt.visit_offsets[i]], vt.code_offsets[vt.visit_offsets[i + 1]]
        assert got[int(vt.subject_id[i])][0] == vt.codes[c0:c1].astype(np.int64).tobytes()
    assert max(b[S.CODES].shape[2] for b in ray_b) <= 3


def test_subjects_spanning_shards_take_the_hash_path(
    ray_local: None, smoke: str, spanning: str
) -> None:
    pipe = IngestPipeline(
        spanning,
        DataConfig(cohort=spanning, batch_size=16),
        rows_per_unit=800,
        validation_cache="none",  # the Ray fit scans (no totals cached by the first fit)
    )
    assert pipe.plan.mode == "hash" and pipe.plan.num_units >= 2
    assert any(p.check == "subject_spans_shards" for p in pipe.report.problems)
    single_fit = pipe.fit()
    assert pipe.fit(use_ray=True).stats == single_fit.stats
    ray_b = _collect(pipe.iter_ray_batches(S.TRAIN_SPLIT, 0))
    one_b = _collect(pipe.iter_batches(S.TRAIN_SPLIT, 0))
    assert _batch_sets(ray_b) == _batch_sets(one_b)
    got = _per_subject(ray_b)
    assert got == _per_subject(one_b)
    # every subject is whole: the same tokens as the Foundation's reader on the merged shards
    ref = load_cohort(spanning).subset(S.TRAIN_SPLIT)
    ft = flatten(ref, single_fit.vocab.lookup(ref.codes)[0])
    assert sorted(got) == sorted(ref.subject_id.tolist())
    for i in range(ref.num_subjects):
        a, b = int(ft.offsets[i]), int(ft.offsets[i + 1])
        assert got[int(ref.subject_id[i])][0] == ft.codes[a:b].astype(np.int64).tobytes()
    # and the same vocabulary as the subject-complete original
    assert single_fit.vocab == IngestPipeline(smoke).fit().vocab


def test_task_groups_are_balanced_and_do_not_change_units(smoke: str) -> None:
    plan = plan_units(smoke, rows_per_unit=300)
    for k in (1, 2, 3, 100):
        groups = task_groups(plan, k)
        assert sorted(u for g in groups for u in g) == list(range(len(plan.units)))
        assert all(g == list(range(g[0], g[-1] + 1)) for g in groups)  # contiguous runs
        assert 1 <= len(groups) <= min(k, len(plan.units))


def test_bad_subjects_are_refused_or_dropped_and_recorded(ray_local: None, tmp_path: Any) -> None:
    b = "1960-01-01"
    rows = [
        (1, b, S.BIRTH_CODE),
        (1, "2020-01-01", "A"),
        (1, "2020-02-01", "B"),
        (2, "2020-01-01", "A"),  # no birth: a subject-level error
        (3, b, S.BIRTH_CODE),
        (3, "2020-01-01", "C"),
        (4, b, S.BIRTH_CODE),  # no visit before its event: dropped by the labels
        (4, "2020-05-01", "D"),
    ]
    out = [(1, True, "2020-03-01"), (2, False, "2021-01-01"), (3, False, "2021-01-01")]
    out += [(4, True, "2020-01-01")]
    cohort = write_cohort(tmp_path / "bad", rows, outcomes=out)
    with pytest.raises(CohortError, match="drop_bad_subjects"):
        IngestPipeline(cohort)
    data = DataConfig(cohort=cohort, drop_bad_subjects=True, batch_size=4)
    pipe = IngestPipeline(cohort, data)
    rejects = str(tmp_path / "rejects.parquet")
    fit = pipe.fit(rejects_path=rejects, vocab_path=str(tmp_path / "vocab.json"))
    assert os.path.exists(tmp_path / "vocab.json")
    assert fit.rejects[S.SUBJECT_ID].to_pylist() == [2, 4]
    assert pq.read_table(rejects).equals(fit.rejects)
    assert load_cohort(cohort, drop_bad_subjects=True).rejects.equals(fit.rejects)
    single = _per_subject(_collect(pipe.iter_batches(None, 0)))
    on_ray = _per_subject(_collect(pipe.iter_ray_batches(None, 0)))
    assert sorted(single) == sorted(on_ray) == [1, 3] and single == on_ray
