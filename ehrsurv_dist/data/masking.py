"""Pretraining targets on the fly (docs/models.md): MLM masks.

Pure numpy. Every random draw is a **counter-based hash** of ``(seed, epoch, subject_id,
position, stream)`` (splitmix64), not a stateful generator: a token's mask depends on nothing
else, so the Ray path and the single-process path, whatever their block or batch order, give
bit-identical masks, and every epoch gets fresh ones.

MLM (BERT): each real token whose code is a vocabulary code (``>= NUM_SPECIAL_TOKENS``; PAD is
never selected, nor is UNK) is selected with
probability 0.15; a selected token becomes ``MASK_ID`` (80%), a random code drawn uniformly from
``[NUM_SPECIAL_TOKENS, vocab_size)`` (10%), or stays (10%). ``mlm_labels`` holds the original code
at selected positions and ``IGNORE_INDEX`` everywhere else (padding included). The unmasked codes
are ``where(mlm_labels != IGNORE_INDEX, mlm_labels, codes)`` (:func:`unmasked_codes`), which is
what next-visit targets must be built from.

NVP targets are not built here: the model builds per-visit targets itself from ``codes``,
``visit_ids`` and ``attention_mask`` under ``visit_causal`` attention
(``objectives.pretraining.build_nvp_targets``).
"""

from __future__ import annotations

import numpy as np

from ehrsurv_dist.rng import (
    STREAM_ACTION,
    STREAM_RANDOM,
    STREAM_SELECT,
    hash64,
    stream_key,
    uniform,
)
from ehrsurv_dist.schema import IGNORE_INDEX, MASK_ID, NUM_SPECIAL_TOKENS

MLM_PROB = 0.15
MLM_MASK_FRACTION = 0.8
MLM_RANDOM_FRACTION = 0.1


def mlm_mask(
    codes: np.ndarray,
    subject_id: np.ndarray,
    position: np.ndarray,
    vocab_size: int,
    seed: int,
    epoch: int,
    prob: float = MLM_PROB,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of real tokens, deterministic per (seed, epoch, subject, position).

    Args:
        codes: int [n]; codes of real tokens only.
        subject_id: int64 [n]; the subject of each token.
        position: int64 [n]; the token's position within its subject (the flat sequence index,
            or ``visit * C + k`` in the hierarchical layout); must not depend on padding.
        vocab_size: number of ids, special tokens included.
        seed, epoch: the draw's key.
        prob: selection probability.

    Returns:
        ``(masked_codes, labels)``: int64 [n] each; ``labels`` = original code where selected,
        ``IGNORE_INDEX`` elsewhere.

    Raises:
        ValueError: ``prob`` outside (0, 1) or ``vocab_size <= NUM_SPECIAL_TOKENS``.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    if vocab_size <= NUM_SPECIAL_TOKENS:
        raise ValueError(f"vocab_size must be > {NUM_SPECIAL_TOKENS}, got {vocab_size}")
    codes = np.asarray(codes, dtype=np.int64)
    sel_u = uniform(hash64(stream_key(seed, epoch, STREAM_SELECT), subject_id, position))
    selected = (sel_u < prob) & (codes >= NUM_SPECIAL_TOKENS)
    masked = codes.copy()
    labels = np.full(len(codes), IGNORE_INDEX, dtype=np.int64)
    idx = np.flatnonzero(selected)
    if len(idx) == 0:
        return masked, labels
    s, p = subject_id[idx], position[idx]
    act = uniform(hash64(stream_key(seed, epoch, STREAM_ACTION), s, p))
    rnd = hash64(stream_key(seed, epoch, STREAM_RANDOM), s, p)
    n_codes = np.uint64(vocab_size - NUM_SPECIAL_TOKENS)
    rand_code = (rnd % n_codes).astype(np.int64) + NUM_SPECIAL_TOKENS
    labels[idx] = codes[idx]
    new = codes[idx].copy()
    new[act < MLM_MASK_FRACTION] = MASK_ID
    is_rand = (act >= MLM_MASK_FRACTION) & (act < MLM_MASK_FRACTION + MLM_RANDOM_FRACTION)
    new[is_rand] = rand_code[is_rand]
    masked[idx] = new
    return masked, labels


def unmasked_codes(codes: np.ndarray, mlm_labels: np.ndarray) -> np.ndarray:
    """The original codes of an MLM-masked batch (labels hold them at masked positions)."""
    return np.where(mlm_labels != IGNORE_INDEX, mlm_labels, codes)
