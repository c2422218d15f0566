"""Code vocabulary: counting, fitting on the train split, lookup, JSON with a content hash.

Pure numpy/pyarrow (no Ray): the Ray pipeline calls :func:`count_codes` inside ``map_batches``
and reduces the per-unit count tables with :func:`merge_counts`, exactly as the single-process
path does, so both fit the same vocabulary.

Id layout: ``PAD_ID=0``, ``MASK_ID=1``, ``UNK_ID=2`` (``schema.SPECIAL_TOKENS``), then the kept
codes from ``NUM_SPECIAL_TOKENS`` on, most frequent first, ties broken by the code string.
A code that is not in the table (unseen in train, below ``min_count`` or past ``max_size``)
maps to ``UNK_ID``; :meth:`Vocabulary.lookup` returns how many tokens did.

The content hash is ``sha256`` of the canonical JSON of the full token list (special tokens
included) and, when the vocabulary carries numeric value bins, of their edges: two vocabularies
with the same hash give every code (and every value) the same id. Runs and checkpoints
record it and refuse a vocabulary whose hash differs (:meth:`Vocabulary.check_hash`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import EhrsurvError

VOCAB_FORMAT = "ehrsurv-vocab/1"
COUNT_CODE = "code"
COUNT_VALUE = "count"
COUNTS_SCHEMA = pa.schema([(COUNT_CODE, pa.string()), (COUNT_VALUE, pa.int64())])


class VocabularyError(EhrsurvError):
    """A vocabulary file is unreadable, corrupt, or does not match the one a run recorded."""


# --------------------------------------------------------------------------------------------
# Counting (map side) and merging (reduce side)


def count_codes(codes: pa.Array | pa.ChunkedArray, mask: np.ndarray | None = None) -> pa.Table:
    """Occurrences of each code string.

    Args:
        codes: string or dictionary<string> array [N] (nulls are not counted).
        mask: optional bool [N]; only positions where it is True are counted.

    Returns:
        Table ``code`` string, ``count`` int64, one row per distinct code, sorted by code.
    """
    if isinstance(codes, pa.ChunkedArray):
        codes = codes.combine_chunks() if codes.num_chunks else pa.array([], pa.string())
    if pa.types.is_dictionary(codes.type):
        idx = codes.indices
        if idx.null_count:
            idx = pc.fill_null(idx, -1)
        ix = np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)
        if mask is not None:
            ix = ix[mask]
        ix = ix[ix >= 0]
        n = np.bincount(ix, minlength=len(codes.dictionary))
        nz = np.flatnonzero(n)
        names = codes.dictionary.cast(pa.string()).take(pa.array(nz, pa.int64()))
        t = pa.table({COUNT_CODE: names, COUNT_VALUE: pa.array(n[nz], pa.int64())})
        # a dictionary may hold the same string twice (after unification): merge
        return merge_counts([t])
    arr = codes.cast(pa.string())
    if mask is not None:
        arr = arr.filter(pa.array(mask))
    vc = pc.value_counts(arr.drop_null())
    t = pa.table(
        {
            COUNT_CODE: vc.field("values").cast(pa.string()),
            COUNT_VALUE: vc.field("counts").cast(pa.int64()),
        }
    )
    return t.sort_by(COUNT_CODE)


def merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    """Sum count tables by code (the reduce step). Integer sums: order does not matter."""
    tables = [t.select([COUNT_CODE, COUNT_VALUE]).cast(COUNTS_SCHEMA) for t in tables]
    if not tables:
        return COUNTS_SCHEMA.empty_table()
    t = pa.concat_tables(tables)
    if t.num_rows == 0:
        return COUNTS_SCHEMA.empty_table()
    g = t.group_by(COUNT_CODE).aggregate([(COUNT_VALUE, "sum")])
    g = g.rename_columns([COUNT_VALUE if c == f"{COUNT_VALUE}_sum" else c for c in g.column_names])
    return g.select([COUNT_CODE, COUNT_VALUE]).cast(COUNTS_SCHEMA).sort_by(COUNT_CODE)


# --------------------------------------------------------------------------------------------
# The vocabulary


# meta key of the numeric value bins (data.numeric; see data/numeric.py): they decide which token
# a value becomes, so they are content, hashed with the tokens.
VALUE_BINS_META = "value_bins"


def _content_hash(tokens: Sequence[str], value_bins: Any = None) -> str:
    content: Any = list(tokens)
    if value_bins is not None:  # without bins the hash is the token list's, as before them
        content = {"tokens": content, VALUE_BINS_META: value_bins}
    blob = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "utf-8"
    )
    return "sha256:" + hashlib.sha256(blob).hexdigest()


class Vocabulary:
    """An immutable code → id table.

    Args:
        codes: the kept code strings in id order (ids ``NUM_SPECIAL_TOKENS + i``).
        counts: train counts of ``codes`` (informational; saved in the JSON).
        meta: free-form provenance (``min_count``, ``max_size``, cohort, ...).

    Raises:
        VocabularyError: a code is repeated, empty, or is a special token name.
    """

    def __init__(
        self,
        codes: Sequence[str],
        counts: Sequence[int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        codes = [str(c) for c in codes]
        if len(set(codes)) != len(codes):
            raise VocabularyError("vocabulary codes must be distinct")
        bad = [c for c in codes if c == "" or c in S.SPECIAL_TOKENS]
        if bad:
            raise VocabularyError(f"invalid vocabulary code(s): {bad[:5]}")
        if counts is not None and len(counts) != len(codes):
            raise VocabularyError(f"{len(counts)} counts for {len(codes)} codes")
        self.codes: tuple[str, ...] = tuple(codes)
        self.counts: tuple[int, ...] | None = (
            tuple(int(c) for c in counts) if counts is not None else None
        )
        self.meta: dict[str, Any] = dict(meta or {})
        self.tokens: tuple[str, ...] = (*S.SPECIAL_TOKENS, *self.codes)
        self.hash: str = _content_hash(self.tokens, self.meta.get(VALUE_BINS_META))
        self._value_set: pa.Array | None = None

    # -- basics ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of ids, special tokens included (the model's ``vocab_size``)."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, hash={self.hash[:19]}…)"

    def __getstate__(self) -> dict[str, Any]:  # pickled into Ray tasks: drop the cache
        d = dict(self.__dict__)
        d["_value_set"] = None
        return d

    def id_of(self, code: str) -> int:
        """Id of one code (``UNK_ID`` if unknown)."""
        ids, _ = self.lookup(pa.array([code], pa.string()))
        return int(ids[0])

    # -- lookup ----------------------------------------------------------------------------
    def _values(self) -> pa.Array:
        if self._value_set is None:
            self._value_set = pa.array(self.codes, pa.string())
        return self._value_set

    def lookup(self, codes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
        """Ids of many codes.

        A dictionary-encoded array is mapped through its (small) dictionary and then indexed,
        so the cost per token is one integer gather.

        Args:
            codes: string or dictionary<string> array [N]; nulls map to ``UNK_ID``.

        Returns:
            ``(ids, n_unknown)``: int32 [N] ids and the number of tokens that became ``UNK_ID``.
        """
        if isinstance(codes, pa.ChunkedArray):
            if codes.num_chunks == 0:
                return np.zeros(0, np.int32), 0
            parts = [self.lookup(c) for c in codes.chunks]
            return np.concatenate([p[0] for p in parts]), sum(p[1] for p in parts)
        if pa.types.is_dictionary(codes.type):
            d_ids, _ = self.lookup(codes.dictionary)
            idx = codes.indices
            if idx.null_count:
                d_ids = np.append(d_ids, np.int32(S.UNK_ID))
                idx = pc.fill_null(idx, len(codes.dictionary))
            ix = np.asarray(idx.to_numpy(zero_copy_only=False))
            ids = d_ids[ix]
        else:
            pos = pc.index_in(codes.cast(pa.string()), value_set=self._values())
            pos = pc.fill_null(pos, -1)
            p = np.asarray(pos.to_numpy(zero_copy_only=False), dtype=np.int32)
            ids = np.where(p >= 0, p + S.NUM_SPECIAL_TOKENS, S.UNK_ID).astype(np.int32)
        return ids, int(np.count_nonzero(ids == S.UNK_ID))

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token strings of ids (for debugging)."""
        return [self.tokens[int(i)] for i in np.asarray(ids).ravel()]

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "hash": self.hash,
            "size": self.size,
            "special_tokens": list(S.SPECIAL_TOKENS),
            "codes": list(self.codes),
            "counts": list(self.counts) if self.counts is not None else None,
            "meta": self.meta,
        }

    def save(self, path: str) -> None:
        """Write the vocabulary as JSON, atomically."""
        atomic.write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        """Read a vocabulary JSON and verify its stored hash.

        Raises:
            VocabularyError: unreadable, not a vocabulary file, or its content does not match
                its stored hash (edited or corrupt).
        """
        try:
            with open(os.fspath(path)) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise VocabularyError(f"cannot read vocabulary {path}: {e}") from None
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            raise VocabularyError(f"{path} is not an ehrsurv vocabulary ({VOCAB_FORMAT})")
        if list(d.get("special_tokens", [])) != list(S.SPECIAL_TOKENS):
            raise VocabularyError(
                f"vocabulary {path} has special tokens {d.get('special_tokens')}, "
                f"expected {list(S.SPECIAL_TOKENS)}"
            )
        try:
            vocab = cls(d["codes"], d.get("counts"), d.get("meta"))
        except (KeyError, TypeError, ValueError, VocabularyError) as e:
            raise VocabularyError(f"vocabulary {path} is malformed: {e}") from None
        if d.get("hash") != vocab.hash:
            raise VocabularyError(
                f"vocabulary {path} is corrupt or was edited: stored hash {d.get('hash')} but "
                f"its content hashes to {vocab.hash}"
            )
        return vocab

    def check_hash(self, expected: str, source: str | None = None) -> None:
        """Refuse a vocabulary other than the one a run or checkpoint recorded.

        Args:
            expected: the hash recorded by the run/checkpoint.
            source: where this vocabulary came from (a file path), named in the error.

        Raises:
            VocabularyError: the hashes differ; the message names both hashes and the file.
        """
        if expected != self.hash:
            where = f" ({source})" if source else ""
            raise VocabularyError(
                f"vocabulary mismatch: the run/checkpoint expects {expected}, but the "
                f"vocabulary{where} has {self.hash}. Token ids would be scrambled; use the "
                "vocabulary file saved with the run."
            )


def fit_vocabulary(
    counts: pa.Table,
    min_count: int = 1,
    max_size: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Vocabulary:
    """The vocabulary of a (train split) count table.

    Args:
        counts: ``code``, ``count`` (e.g. :func:`merge_counts` of the train units).
        min_count: keep codes seen at least this often.
        max_size: keep at most this many codes (special tokens not counted); None = no cap.
        meta: provenance stored in the JSON.

    Returns:
        Codes ordered by count descending, ties by code string ascending.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be > 0 or None, got {max_size}")
    c = merge_counts([counts])
    codes = np.asarray(c[COUNT_CODE].to_pylist(), dtype=object)
    n = np.asarray(c[COUNT_VALUE].to_numpy(zero_copy_only=False), dtype=np.int64)
    special = np.isin(codes, np.asarray(S.SPECIAL_TOKENS, dtype=object)) | (codes == "")
    keep = (n >= min_count) & ~special
    codes, n = codes[keep], n[keep]
    # merge_counts sorted by code; a stable sort on -count keeps code order within ties
    order = np.argsort(-n, kind="stable")
    if max_size is not None:
        order = order[:max_size]
    m = {"min_count": min_count, "max_size": max_size, **(meta or {})}
    return Vocabulary([str(x) for x in codes[order]], n[order].tolist(), m)
