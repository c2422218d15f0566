"""Counter-based random streams (splitmix64): every draw is a hash of its coordinates.

A draw depends only on ``(seed, epoch, stream, subject, position, ...)``, never on the order in
which blocks or batches are processed, so the Ray Data path and the single-process path give
bit-identical masks and shuffles, and a resumed run draws what an uninterrupted one would.
Used by MLM masking, the collate shuffles, hash splits and the subject buckets of the ingest.
"""

from __future__ import annotations

import numpy as np

# Streams of independent draws per token.
STREAM_SELECT, STREAM_ACTION, STREAM_RANDOM = 1, 2, 3
# Streams of the collate shuffles (subjects, batch order).
STREAM_SUBJECTS, STREAM_BATCHES = 11, 12

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic; identical on every machine)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, epoch: int, stream: int) -> np.uint64:
    """One 64-bit key per (seed, epoch, stream)."""
    k = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    k = splitmix64(k ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
    return np.uint64(splitmix64(k ^ np.uint64(stream))[0])


def hash64(key: np.uint64, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """uint64 hash of ``key`` with int arrays ``a`` (and ``b``), elementwise."""
    h = splitmix64(np.asarray(a).astype(np.int64).view(np.uint64) ^ key)
    if b is not None:
        with np.errstate(over="ignore"):
            h = splitmix64(h + np.asarray(b).astype(np.int64).view(np.uint64) * _GOLDEN)
    return h


def uniform(h: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from the top 53 bits of a uint64 hash."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / float(1 << 53))
