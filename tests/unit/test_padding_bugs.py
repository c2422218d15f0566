"""One test per padding bug of docs/data.md (data side): each fails if the bug comes back.

Bug 4 (``scatter_add`` aggregation over pads) lives in the model and is tested there.
"""

from __future__ import annotations

import numpy as np
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.checks import BatchCheckError, check_flat_batch, visit_token_counts
from ehrsurv_dist.data.collate import BatchSpec, collate_block, pad_flat
from ehrsurv_dist.data.layouts import FlatTokens, flatten
from ehrsurv_dist.data.visits import build_visits
from ehrsurv_dist.ragged import Ragged
from ehrsurv_dist.testing import events_table, outcomes_table


def _tokens() -> FlatTokens:
    """Three subjects of 1, 3 and 6 tokens (visits [2, 1] and [1, 2, 3])."""
    rows = [(1, "1950-01-01", S.BIRTH_CODE), (1, "2020-01-01", "A")]
    rows += [(2, "1950-01-01", S.BIRTH_CODE), (2, "2020-01-01", "A"), (2, "2020-01-01", "B")]
    rows += [(2, "2020-02-01", "C")]
    rows += [(3, "1950-01-01", S.BIRTH_CODE), (3, "2020-01-01", "A"), (3, "2020-02-01", "B")]
    rows += [(3, "2020-02-01", "C"), (3, "2020-03-01", "A"), (3, "2020-03-01", "B")]
    rows += [(3, "2020-03-01", "C")]
    out = [(s, False, "2021-01-01") for s in (1, 2, 3)]
    sv, _ = build_visits(events_table(rows), outcomes_table(out))
    ids = np.array([{"A": 3, "B": 4, "C": 5}[c] for c in sv.codes.to_pylist()], np.int32)
    return flatten(sv, ids)


def _batch() -> tuple[dict[str, np.ndarray], np.ndarray]:
    ft = _tokens()
    pb = pad_flat(ft, Ragged(np.arange(3), np.array([0, 3])), BatchSpec(pad_multiple=8))
    return {k: v.copy() for k, v in pb.batch(0).items()}, pb.expected_for(0)["tokens"]


def _fails(batch: dict[str, np.ndarray], expected: np.ndarray | None, check: str) -> None:
    with pytest.raises(BatchCheckError) as e:
        check_flat_batch(batch, expected)
    assert e.value.check == check, str(e.value)


def test_clean_batch_passes() -> None:
    b, exp = _batch()
    check_flat_batch(b, exp)
    assert b[S.CODES].shape == (3, 8)


def test_bug1_batch_without_attention_mask_is_refused() -> None:
    """Bug 1: a model called without the mask attends to pads. Batches always carry it."""
    b, exp = _batch()
    assert b[S.ATTENTION_MASK].dtype == np.bool_
    del b[S.ATTENTION_MASK]
    _fails(b, exp, "fields")


def test_bug2_pad_visit_ids_must_be_zero() -> None:
    """Bug 2: undefined visit ids on padding. The collate writes 0; the check catches others."""
    b, exp = _batch()
    assert (b[S.VISIT_IDS][~b[S.ATTENTION_MASK]] == 0).all()
    b[S.VISIT_IDS][0, 5] = 7  # a pad position of the 1-token row
    _fails(b, exp, "pad_values")


def test_bug3_visit_sizes_count_real_tokens_only() -> None:
    """Bug 3: ``(visit_ids == t).sum()`` counts pads (they carry visit 0)."""
    b, _ = _batch()
    counts = visit_token_counts(b[S.VISIT_IDS], b[S.ATTENTION_MASK], 3)
    assert counts.tolist() == [[1, 0, 0], [2, 1, 0], [1, 2, 3]]
    naive = (b[S.VISIT_IDS] == 0).sum(1)
    assert naive.tolist() != counts[:, 0].tolist()  # what the bug would have produced


def test_bug5_visit_ids_are_fed_not_segments() -> None:
    """Bug 5: the visit embedding was fed all-zero segment ids. Real visit ids are required."""
    b, exp = _batch()
    assert "segment_ids" not in b
    assert b[S.VISIT_IDS][2, :6].tolist() == [0, 1, 1, 2, 2, 2]
    b[S.VISIT_IDS][:] = 0
    _fails(b, exp, "visit_ids")


def test_mask_derived_from_visit_ids_is_caught() -> None:
    """Never infer validity from ``visit_ids == 0``: visit 0 is a real visit."""
    b, exp = _batch()
    b[S.ATTENTION_MASK] = b[S.VISIT_IDS] != 0
    _fails(b, exp, "token_counts")
    _fails(b, None, "right_padding")  # without expected counts, the prefix rule still fails


def test_no_mlm_loss_on_padding() -> None:
    """Loss on padding teaches the model to predict padding: pads are IGNORE_INDEX."""
    ft = _tokens()
    pb = collate_block(ft, BatchSpec(batch_size=3, mlm_vocab_size=6, mlm_prob=0.9), 0, 0)
    b = {k: v.copy() for k, v in pb.batch(0).items()}
    assert (b[S.MLM_LABELS][~b[S.ATTENTION_MASK]] == S.IGNORE_INDEX).all()
    check_flat_batch(b)
    b[S.MLM_LABELS][0, 7] = 3
    _fails(b, None, "pad_values")


def test_left_padding_is_caught() -> None:
    b, exp = _batch()
    for name in (S.CODES, S.AGES, S.VISIT_IDS, S.ATTENTION_MASK):
        b[name][0] = np.roll(b[name][0], 3)
    _fails(b, exp, "right_padding")


def test_misaligned_per_token_tensors_are_caught() -> None:
    """All per-token tensors must be truncated/shifted together."""
    b, exp = _batch()
    b[S.VISIT_IDS][2, :6] = [1, 1, 2, 2, 2, 0]  # visit ids shifted by one token
    _fails(b, exp, "visit_ids")


def test_unrebased_visit_ids_are_caught() -> None:
    """keep_recent truncation must rebase visit ids to 0 and shift last_visit with them."""
    b, exp = _batch()
    m = b[S.ATTENTION_MASK]
    b[S.VISIT_IDS][m] += 2
    b[S.LAST_VISIT] += 2
    b[S.NUM_VISITS] += 2
    _fails(b, exp, "visit_ids")


def test_shape_mismatch_is_caught() -> None:
    b, exp = _batch()
    b[S.AGES] = b[S.AGES][:, :4]
    _fails(b, exp, "shapes")
