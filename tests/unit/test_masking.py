"""MLM masks: rates, invariants, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.masking import mlm_mask, unmasked_codes
from ehrsurv_dist.rng import hash64, stream_key, uniform

VOCAB = 99  # odd size, so a swapped dimension cannot pass


def _tokens(n_subjects: int = 2000, length: int = 50) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    sid = np.repeat(np.arange(n_subjects, dtype=np.int64) + 1000, length)
    pos = np.tile(np.arange(length, dtype=np.int64), n_subjects)
    codes = rng.integers(S.NUM_SPECIAL_TOKENS, VOCAB, len(sid)).astype(np.int64)
    return codes, sid, pos


def test_mlm_rates_80_10_10() -> None:
    codes, sid, pos = _tokens()
    masked, labels = mlm_mask(codes, sid, pos, VOCAB, seed=1, epoch=0)
    sel = labels != S.IGNORE_INDEX
    assert sel.mean() == pytest.approx(0.15, abs=0.005)
    np.testing.assert_array_equal(labels[sel], codes[sel])
    np.testing.assert_array_equal(masked[~sel], codes[~sel])
    is_mask = masked[sel] == S.MASK_ID
    assert is_mask.mean() == pytest.approx(0.8, abs=0.02)
    changed = (masked[sel] != codes[sel]) & ~is_mask
    kept = masked[sel] == codes[sel]
    # 10% random (a random code may equal the original: slightly fewer "changed")
    assert changed.mean() == pytest.approx(0.1 * (1 - 1 / (VOCAB - 3)), abs=0.015)
    assert kept.mean() == pytest.approx(0.1, abs=0.015)
    rnd = masked[sel][~is_mask]
    assert rnd.min() >= S.NUM_SPECIAL_TOKENS and rnd.max() < VOCAB


def test_mlm_never_selects_special_tokens() -> None:
    codes, sid, pos = _tokens(200, 40)
    codes[::3] = S.UNK_ID
    codes[1::7] = S.PAD_ID
    masked, labels = mlm_mask(codes, sid, pos, VOCAB, seed=0, epoch=0)
    special = codes < S.NUM_SPECIAL_TOKENS
    assert (labels[special] == S.IGNORE_INDEX).all()
    np.testing.assert_array_equal(masked[special], codes[special])


def test_mlm_is_a_function_of_seed_epoch_subject_position() -> None:
    codes, sid, pos = _tokens(300, 20)
    m1, l1 = mlm_mask(codes, sid, pos, VOCAB, seed=5, epoch=2)
    perm = np.random.default_rng(1).permutation(len(codes))  # other batch composition/order
    m2, l2 = mlm_mask(codes[perm], sid[perm], pos[perm], VOCAB, seed=5, epoch=2)
    np.testing.assert_array_equal(m1[perm], m2)
    np.testing.assert_array_equal(l1[perm], l2)
    _, l3 = mlm_mask(codes, sid, pos, VOCAB, seed=5, epoch=3)
    _, l4 = mlm_mask(codes, sid, pos, VOCAB, seed=6, epoch=2)
    assert (l3 != l1).any() and (l4 != l1).any()  # fresh masks per epoch and per seed


def test_mlm_pinned_values() -> None:
    """Pinned draws: a change to the hashing scheme changes every mask (and a resumed run's)."""
    u = uniform(hash64(stream_key(0, 0, 1), np.array([1, 2]), np.array([0, 0])))
    np.testing.assert_allclose(u, [0.18816673, 0.86748199], rtol=0, atol=1e-8)
    codes = np.arange(3, 23, dtype=np.int64)
    masked, labels = mlm_mask(codes, np.full(20, 7), np.arange(20), VOCAB, 0, 0, prob=0.3)
    assert masked.tolist() == [3, 4, 5, 6, 1, 1, 1, 1, 11, 12, 13, 14, 15, 16, 1, 1, 19, 1, 1, 22]
    ign = S.IGNORE_INDEX
    assert labels.tolist() == [ign] * 4 + [7, 8, 9, 10] + [ign] * 6 + [17, 18, ign, 20, 21, 22]


def test_unmasked_codes_recovers_the_input() -> None:
    codes, sid, pos = _tokens(100, 10)
    masked, labels = mlm_mask(codes, sid, pos, VOCAB, seed=0, epoch=0)
    np.testing.assert_array_equal(unmasked_codes(masked, labels), codes)


def test_mlm_argument_checks() -> None:
    codes, sid, pos = _tokens(2, 3)
    with pytest.raises(ValueError, match="prob"):
        mlm_mask(codes, sid, pos, VOCAB, 0, 0, prob=0.0)
    with pytest.raises(ValueError, match="vocab_size"):
        mlm_mask(codes, sid, pos, S.NUM_SPECIAL_TOKENS, 0, 0)
