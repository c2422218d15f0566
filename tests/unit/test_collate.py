"""Length bucketing, per-batch padding, block → batches, and the Ray-free import rule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.blocks import flat_to_arrow, hier_to_arrow
from ehrsurv_dist.data.checks import check_flat_batch, check_hierarchical_batch
from ehrsurv_dist.data.collate import (
    BatchSpec,
    BatchStats,
    batches_from_blocks,
    bucket_order,
    collate_block,
    pad_flat,
    pad_hierarchical,
    round_up,
)
from ehrsurv_dist.data.layouts import FlatTokens, VisitTokens
from ehrsurv_dist.ragged import Ragged


def make_flat(lengths: list[int], first_id: int = 100, seed: int = 0) -> FlatTokens:
    """Subjects with the given token counts; visits of 2 tokens; codes = 3 + (sid + pos) % 50."""
    rng = np.random.default_rng(seed)
    n = np.asarray(lengths, dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(n)])
    sid = np.arange(len(n), dtype=np.int64) + first_id
    pos = np.arange(off[-1]) - np.repeat(off[:-1], n)
    tok_sid = np.repeat(sid, n)
    vids = (pos // 2).astype(np.int32)
    last = np.array([(k - 1) // 2 for k in n], dtype=np.int64)
    return FlatTokens(
        subject_id=sid,
        event=rng.random(len(n)) < 0.5,
        last_visit=last,
        truncated=np.zeros(len(n), bool),
        tokens=Ragged(
            {
                S.CODES: (3 + (tok_sid + pos) % 50).astype(np.int32),
                S.AGES: (50 + vids / 10).astype(np.float32),
                S.VISIT_IDS: vids,
            },
            off.astype(np.int64),
        ),
    )


def test_round_up() -> None:
    assert round_up(np.array([0, 1, 8, 9, 17]), 8).tolist() == [0, 8, 8, 16, 24]


def test_bucket_order_is_a_permutation_with_one_partial_batch_at_most() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 1000)
    sid = np.arange(1000) + 5
    order, bounds = bucket_order(lengths, sid, batch_size=32, window_batches=4, seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(1000))
    sizes = np.diff(bounds)
    assert (sizes == 32).sum() == 31 and sizes.sum() == 1000 and (sizes == 8).sum() == 1
    # within a batch lengths are close: sorted inside 128-subject windows
    spread = [np.ptp(lengths[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert np.median(spread) < 15
    # deterministic, and fresh per epoch
    o2, b2 = bucket_order(lengths, sid, batch_size=32, window_batches=4, seed=1, epoch=0)
    np.testing.assert_array_equal(order, o2)
    o3, _ = bucket_order(lengths, sid, batch_size=32, window_batches=4, seed=1, epoch=1)
    assert not np.array_equal(order, o3)
    # depends on the subjects, not on the row order they came in
    perm = rng.permutation(1000)
    o4, b4 = bucket_order(lengths[perm], sid[perm], 32, 4, 1, 0)
    np.testing.assert_array_equal(sid[perm][o4], sid[order])


def test_pad_flat_shapes_values_and_cap() -> None:
    ft = make_flat([3, 9, 1, 20, 5])
    order = np.array([2, 0, 4, 1, 3])
    bounds = np.array([0, 3, 5])
    pb = pad_flat(ft, Ragged(order, bounds), BatchSpec(pad_multiple=8, max_seq_len=20))
    b0, b1 = pb.batch(0), pb.batch(1)
    assert b0[S.CODES].shape == (3, 8)  # longest 5 -> 8
    assert b1[S.CODES].shape == (2, 20)  # longest 20 -> 24, capped at max_len 20
    assert b0[S.SUBJECT].tolist() == [102, 100, 104]
    for b, rows in ((b0, [2, 0, 4]), (b1, [4 - 3, 3])):
        for r, i in enumerate(rows):
            s = ft.subject(i)
            n = len(s["codes"])
            assert b[S.CODES][r, :n].tolist() == s["codes"]
            assert b[S.VISIT_IDS][r, :n].tolist() == s["visit_ids"]
            assert b[S.ATTENTION_MASK][r].sum() == n
            assert (b[S.CODES][r, n:] == S.PAD_ID).all() and (b[S.VISIT_IDS][r, n:] == 0).all()
        check_flat_batch(b)
    for name, spec in (
        (S.CODES, np.int64),
        (S.AGES, np.float32),
        (S.VISIT_IDS, np.int64),
        (S.ATTENTION_MASK, np.bool_),
        (S.LAST_VISIT, np.int64),
        (S.EVENT, np.bool_),
        (S.NUM_VISITS, np.int64),
    ):
        assert b0[name].dtype == spec, name
    assert pb.real_tokens == 38 and pb.token_slots == 3 * 8 + 2 * 20


def test_padding_does_not_change_real_positions() -> None:
    """docs/data.md test (a), data side: a subject padded in a longer batch has the same prefix."""
    ft = make_flat([4, 4, 30])
    short = pad_flat(ft, Ragged(np.array([0, 1]), np.array([0, 2])), BatchSpec()).batch(0)
    long = pad_flat(ft, Ragged(np.array([0, 2]), np.array([0, 2])), BatchSpec()).batch(0)
    for name in (S.CODES, S.AGES, S.VISIT_IDS, S.ATTENTION_MASK):
        np.testing.assert_array_equal(short[name][0], long[name][0, : short[name].shape[1]])
        assert not long[S.ATTENTION_MASK][0, 4:].any()


def test_collate_block_mlm_matches_per_subject_masks() -> None:
    ft = make_flat(list(range(1, 41)))
    spec = BatchSpec(batch_size=8, window_batches=2, mlm_vocab_size=60, seed=3)
    pb = collate_block(ft, spec, epoch=1, unit=0)
    seen = {}
    for b in pb:
        check_flat_batch(b)
        n = b[S.ATTENTION_MASK].sum(1)
        for r, s in enumerate(b[S.SUBJECT]):
            seen[int(s)] = (b[S.CODES][r, : n[r]].copy(), b[S.MLM_LABELS][r, : n[r]].copy())
    # other batch size, windows and unit: other batches, same masks per subject
    spec2 = BatchSpec(batch_size=5, window_batches=3, mlm_vocab_size=60, seed=3)
    pb2 = collate_block(ft, spec2, 1, unit=9)
    for b in pb2:
        n = b[S.ATTENTION_MASK].sum(1)
        for r, s in enumerate(b[S.SUBJECT]):
            np.testing.assert_array_equal(seen[int(s)][0], b[S.CODES][r, : n[r]])
            np.testing.assert_array_equal(seen[int(s)][1], b[S.MLM_LABELS][r, : n[r]])
    labels = np.concatenate([v[1] for v in seen.values()])
    assert 0.05 < (labels != S.IGNORE_INDEX).mean() < 0.3


def test_real_token_fraction_bucketing_beats_random() -> None:
    rng = np.random.default_rng(0)
    ft = make_flat(rng.geometric(0.1, 4096).tolist())
    bucketed = collate_block(ft, BatchSpec(batch_size=32, window_batches=64, pad_multiple=1), 0, 0)
    unsorted = collate_block(ft, BatchSpec(batch_size=32, window_batches=1, pad_multiple=1), 0, 0)
    frac = bucketed.real_tokens / bucketed.token_slots
    assert frac > 0.9 > unsorted.real_tokens / unsorted.token_slots


def _hier() -> VisitTokens:
    sizes = [[2, 1], [3], [1, 1, 1, 4], [2]]
    nv = np.array([len(s) for s in sizes])
    flat_sizes = np.array([x for s in sizes for x in s])
    codes = (3 + np.arange(flat_sizes.sum())).astype(np.int32)
    return VisitTokens(
        subject_id=np.arange(4, dtype=np.int64) + 1,
        event=np.array([True, False, True, False]),
        last_visit=(nv - 1).astype(np.int64),
        truncated=np.zeros(4, bool),
        visits=Ragged.from_lengths(
            {
                S.AGES: np.arange(len(flat_sizes), dtype=np.float32) + 40,
                S.TIME_DELTAS: np.ones(len(flat_sizes), dtype=np.float32),
                S.CODES: Ragged.from_lengths(codes, flat_sizes),
            },
            nv,
        ),
    )


HIER_1 = BatchSpec(layout="hierarchical", pad_multiple=1)


def test_pad_hierarchical() -> None:
    vt = _hier()
    pb = pad_hierarchical(vt, Ragged(np.array([2, 0, 1, 3]), np.array([0, 2, 4])), HIER_1)
    b = pb.batch(0)
    assert b[S.CODES].shape == (2, 4, 4) and b[S.VISIT_MASK].shape == (2, 4)
    assert b[S.CODES][0, 3].tolist() == [12, 13, 14, 15]  # subject 3's 4th visit
    assert b[S.CODES][1, 0].tolist() == [3, 4, 0, 0] and b[S.CODES][1, 1].tolist() == [5, 0, 0, 0]
    assert b[S.VISIT_MASK].sum(1).tolist() == [4, 2]
    assert b[S.AGES][1].tolist() == [40, 41, 0, 0]
    check_hierarchical_batch(b, pb.expected_for(0)["visits"], pb.expected_for(0)["codes"])
    b1 = pb.batch(1)
    assert b1[S.CODES].shape == (2, 1, 3)
    check_hierarchical_batch(b1)
    capped = pad_hierarchical(
        vt, Ragged(np.arange(4), np.array([0, 4])), BatchSpec(layout="hierarchical", max_visits=5)
    )
    assert capped.batch(0)[S.CODES].shape == (4, 5, 8)


def test_batches_from_blocks_splits_units_and_counts() -> None:
    a = flat_to_arrow(make_flat([3, 5, 7, 2, 9], first_id=10), unit=0)
    b = flat_to_arrow(make_flat([4, 4, 6], first_id=50), unit=1)
    both = pa.concat_tables([a, b])  # a block holding two units
    spec = BatchSpec(batch_size=2)
    stats = BatchStats()
    batches = list(batches_from_blocks([both], spec, epoch=0, stats=stats))
    ids = sorted(int(s) for x in batches for s in x[S.SUBJECT])
    assert ids == [10, 11, 12, 13, 14, 50, 51, 52]
    assert stats.blocks == 2 and stats.batches == 5 and stats.subjects == 8
    assert stats.real_tokens == 3 + 5 + 7 + 2 + 9 + 4 + 4 + 6
    # no batch mixes units
    assert all(len({int(s) // 50 for s in x[S.SUBJECT]}) == 1 for x in batches)
    dropped = list(batches_from_blocks([both], BatchSpec(batch_size=2, drop_last=True), 0))
    assert all(len(x[S.SUBJECT]) == 2 for x in dropped) and len(dropped) == 3
    hb = hier_to_arrow(_hier(), unit=0)
    hier = list(batches_from_blocks([hb], BatchSpec(layout="hierarchical", batch_size=3), 0))
    assert sum(len(x[S.SUBJECT]) for x in hier) == 4


def test_batch_spec_validation() -> None:
    with pytest.raises(ValueError, match="layout"):
        BatchSpec(layout="nested")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        BatchSpec(batch_size=0)


def test_pure_modules_import_without_ray() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import ehrsurv_dist.data.vocab, ehrsurv_dist.data.events, ehrsurv_dist.data.visits\n"
        "import ehrsurv_dist.data.layouts, ehrsurv_dist.data.blocks, ehrsurv_dist.data.padding\n"
        "import ehrsurv_dist.data.collate, ehrsurv_dist.data.masking, ehrsurv_dist.data.checks\n"
        "import ehrsurv_dist.data.plan, ehrsurv_dist.data.encode, ehrsurv_dist.data.scan\n"
        "import ehrsurv_dist.data.cohort, ehrsurv_dist.data.shards, ehrsurv_dist.data.pipeline\n"
        "assert 'ray.data' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_unit_split_over_blocks_is_reassembled() -> None:
    """Ray may cut a compact block between any two subjects; the batches must not change."""
    a = flat_to_arrow(make_flat([3, 5, 7, 2, 9, 4], first_id=10), unit=0)
    b = flat_to_arrow(make_flat([4, 4, 6], first_id=50), unit=1)
    spec = BatchSpec(batch_size=2, window_batches=2)
    whole = list(batches_from_blocks([a, b], spec, epoch=3))
    cut = list(batches_from_blocks([a.slice(0, 4), b, a.slice(4)], spec, epoch=3))
    assert len(cut) == len(whole)
    by_subjects = {tuple(y[S.SUBJECT].tolist()): y for y in cut}  # unit 1 now completes first
    for x in whole:
        y = by_subjects[tuple(x[S.SUBJECT].tolist())]
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])
    # a piece that never completes (a unit split between consumers) is still delivered
    partial = list(batches_from_blocks([a.slice(0, 4)], spec, epoch=3))
    assert sorted(int(s) for x in partial for s in x[S.SUBJECT]) == [10, 11, 12, 13]


def test_an_empty_block_gives_no_batches() -> None:
    """A unit with no subject of the split (small units, rare splits) must pass through."""
    ft = make_flat([])
    pb = collate_block(ft, BatchSpec(), 0, 0)
    assert len(pb) == 0
    assert list(batches_from_blocks([flat_to_arrow(ft, 0)], BatchSpec(), 0)) == []
