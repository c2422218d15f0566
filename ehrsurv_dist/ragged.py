"""One ragged container: rows of varying length stored as flat values plus offsets.

Every per-subject sequence in the package (visits of a subject, codes of a visit, tokens of a
subject, hazards of a subject) is a :class:`Ragged`: ``values`` holds the elements of all rows
back to back and row i is ``values[offsets[i]:offsets[i + 1]]``. Selecting, reordering or
joining rows is done here once (``take``, ``concat``, ``slice``) instead of by hand in every
container.

``values`` may be

- a numpy array (``[NE]`` or ``[NE, ...]``),
- a pyarrow array (codes as strings; taken with ``pyarrow.compute.take``),
- another :class:`Ragged` (two levels: subjects → visits → codes; taking subjects takes their
  visits, which takes the visits' codes),
- a dict of the above, all of length NE (several aligned columns that share the offsets).

Pure numpy/pyarrow; no Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Values = Union[np.ndarray, pa.Array, "Ragged", Mapping[str, Any]]


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised.

    Args:
        starts: int [R]; first element of each range.
        lengths: int [R]; elements in each range (>= 0).

    Returns:
        int64 [sum(lengths)].
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths  # output position where each range starts
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """int64 [R + 1] offsets of rows with ``lengths`` [R] (0, then the running sum)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def rows_any(offsets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bool [R]: whether row i holds an element where ``mask`` [NE] is True (rows by ``offsets``
    [R + 1]); one running count, no loop over rows."""
    seen = offsets_of(np.asarray(mask, dtype=np.int64))  # seen[j] = True elements before j
    offsets = np.asarray(offsets, dtype=np.int64)
    return (seen[offsets[1:]] - seen[offsets[:-1]]) > 0


def num_elements(values: Values) -> int:
    """Number of elements (rows of the next level) in ``values``."""
    if isinstance(values, Ragged):
        return len(values)
    if isinstance(values, Mapping):
        sizes = {num_elements(v) for v in values.values()}
        if len(sizes) > 1:
            raise ValueError(f"columns of one Ragged differ in length: {sorted(sizes)}")
        return sizes.pop() if sizes else 0
    return len(values)


def take_values(values: Values, idx: np.ndarray) -> Values:
    """Elements ``idx`` of ``values`` (any of the supported kinds), in that order."""
    if isinstance(values, Ragged):
        return values.take(idx)
    if isinstance(values, Mapping):
        return {k: take_values(v, idx) for k, v in values.items()}
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        out = pc.take(values, pa.array(idx, pa.int64()))
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return np.asarray(values)[idx]


def slice_values(values: Values, lo: int, hi: int) -> Values:
    """Elements ``lo:hi`` of ``values`` (views where the kind allows)."""
    if isinstance(values, Ragged):
        return values.slice(lo, hi)
    if isinstance(values, Mapping):
        return {k: slice_values(v, lo, hi) for k, v in values.items()}
    return values[lo:hi]


def concat_values(parts: Sequence[Values]) -> Values:
    """Join element lists of the same kind, end to end."""
    first = parts[0]
    if isinstance(first, Ragged):
        return Ragged.concat(list(parts))  # type: ignore[arg-type]
    if isinstance(first, Mapping):
        return {k: concat_values([p[k] for p in parts]) for k in first}  # type: ignore[index]
    if isinstance(first, (pa.Array, pa.ChunkedArray)):
        chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
        return pa.chunked_array(chunks, type=first.type).combine_chunks()
    return np.concatenate([np.asarray(p) for p in parts])


@dataclass(frozen=True)
class Ragged:
    """R rows of varying length: row i is ``values[offsets[i]:offsets[i + 1]]``.

    Attributes:
        values: the elements of every row, back to back (see the module doc for the kinds).
        offsets: int64 [R + 1]; starts at 0, non-decreasing, ends at the number of elements.
    """

    values: Values
    offsets: np.ndarray

    def __post_init__(self) -> None:
        off = np.asarray(self.offsets, dtype=np.int64)
        object.__setattr__(self, "offsets", off)
        if off.ndim != 1 or off.size < 1 or off[0] != 0:
            raise ValueError("offsets: need a 1-D array of R + 1 entries starting at 0")
        n = num_elements(self.values)
        if int(off[-1]) != n:
            raise ValueError(f"offsets end at {int(off[-1])}, values hold {n} elements")

    @classmethod
    def from_lengths(cls, values: Values, lengths: np.ndarray) -> Ragged:
        """Rows of ``lengths`` [R] consecutive elements of ``values``."""
        return cls(values, offsets_of(lengths))

    @classmethod
    def empty(cls, values: Values) -> Ragged:
        """Zero rows over ``values`` (which must be empty)."""
        return cls(values, np.zeros(1, dtype=np.int64))

    def __len__(self) -> int:
        """Number of rows R."""
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """int64 [R]: elements per row."""
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        """int64 [R]: first element of each row."""
        return self.offsets[:-1]

    @property
    def num_elements(self) -> int:
        return int(self.offsets[-1])

    def row_ids(self) -> np.ndarray:
        """int64 [NE]: the row of every element."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def row(self, i: int) -> Values:
        """The elements of row ``i``."""
        return slice_values(self.values, int(self.offsets[i]), int(self.offsets[i + 1]))

    def element_index(self, idx: np.ndarray) -> np.ndarray:
        """int64: positions in ``values`` of the elements of rows ``idx``, row after row."""
        idx = np.asarray(idx, dtype=np.int64)
        return concat_ranges(self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx])

    def take(self, idx: np.ndarray) -> Ragged:
        """Rows ``idx`` (repeats allowed), in that order, with their elements."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        return Ragged(take_values(self.values, self.element_index(idx)), offsets_of(lengths))

    def slice(self, lo: int, hi: int) -> Ragged:
        """Rows ``lo:hi`` (values sliced, offsets rebased to 0)."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        return Ragged(slice_values(self.values, a, b), self.offsets[lo : hi + 1] - a)

    def with_values(self, values: Values) -> Ragged:
        """The same rows over other element values (aligned with the old ones)."""
        return Ragged(values, self.offsets)

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        """The rows of every part, part after part."""
        if not parts:
            raise ValueError("concat needs at least one part")
        lengths = np.concatenate([p.lengths for p in parts])
        return Ragged(concat_values([p.values for p in parts]), offsets_of(lengths))
