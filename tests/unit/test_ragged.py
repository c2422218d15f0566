"""The one ragged container: take / slice / concat against plain Python lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ehrsurv_dist.ragged import Ragged, concat_ranges, offsets_of, rows_any


def _rows(r: Ragged) -> list:
    out = []
    for i in range(len(r)):
        row = r.row(i)
        if isinstance(row, Ragged):
            out.append(_rows(row))
        elif isinstance(row, dict):
            out.append(
                {k: (v.tolist() if hasattr(v, "tolist") else v.to_pylist()) for k, v in row.items()}
            )
        elif isinstance(row, pa.Array):
            out.append(row.to_pylist())
        else:
            out.append(np.asarray(row).tolist())
    return out


def test_concat_ranges_matches_python() -> None:
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 100, 50)
    lengths = rng.integers(0, 7, 50)
    want = [x for s, n in zip(starts, lengths, strict=True) for x in range(s, s + n)]
    assert concat_ranges(starts, lengths).tolist() == want
    assert offsets_of([2, 0, 3]).tolist() == [0, 2, 2, 5]


def test_take_slice_concat_numpy_rows() -> None:
    r = Ragged.from_lengths(np.arange(10.0), [3, 0, 4, 3])
    rows = _rows(r)
    assert rows == [[0, 1, 2], [], [3, 4, 5, 6], [7, 8, 9]]
    assert _rows(r.take(np.array([3, 0, 3, 1]))) == [rows[3], rows[0], rows[3], rows[1]]
    assert _rows(r.slice(1, 3)) == rows[1:3]
    assert r.slice(1, 3).offsets.tolist() == [0, 0, 4]
    both = Ragged.concat([r.slice(2, 4), r.slice(0, 2)])
    assert _rows(both) == rows[2:4] + rows[0:2]
    assert r.lengths.tolist() == [3, 0, 4, 3]
    assert r.row_ids().tolist() == [0, 0, 0, 2, 2, 2, 2, 3, 3, 3]


def test_two_levels_with_aligned_columns_and_arrow_codes() -> None:
    # 2 subjects; visits (time, codes); codes as an Arrow string array
    codes = Ragged.from_lengths(pa.array(["a", "b", "c", "d", "e", "f"]), [2, 1, 3])
    visits = Ragged.from_lengths({"time": np.array([10, 20, 30]), "codes": codes}, [2, 1])
    got = visits.take(np.array([1, 0]))
    assert got.lengths.tolist() == [1, 2]
    assert got.values["time"].tolist() == [30, 10, 20]
    assert _rows(got.values["codes"]) == [["d", "e", "f"], ["a", "b"], ["c"]]
    joined = Ragged.concat([got, visits.slice(1, 2)])
    assert joined.values["time"].tolist() == [30, 10, 20, 30]
    assert _rows(joined.values["codes"])[-1] == ["d", "e", "f"]


def test_bad_offsets_are_refused() -> None:
    with pytest.raises(ValueError, match="offsets end at 4"):
        Ragged(np.arange(3), np.array([0, 4]))
    with pytest.raises(ValueError, match="starting at 0"):
        Ragged(np.arange(3), np.array([1, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        Ragged({"a": np.arange(2), "b": np.arange(3)}, np.array([0, 2]))


def test_rows_any_matches_python() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 5, 40)
    mask = rng.random(int(lengths.sum())) < 0.2
    off = offsets_of(lengths)
    want = [bool(mask[a:b].any()) for a, b in zip(off[:-1], off[1:], strict=True)]
    assert rows_any(off, mask).tolist() == want
    assert rows_any(np.zeros(3, np.int64), np.zeros(0, bool)).tolist() == [False, False]
