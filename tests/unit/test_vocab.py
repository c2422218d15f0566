"""Vocabulary: counting, the map/reduce equivalence, fitting rules, lookup, JSON and its hash."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.vocab import (
    Vocabulary,
    VocabularyError,
    count_codes,
    fit_vocabulary,
    merge_counts,
)


def _counts(t: pa.Table) -> dict[str, int]:
    return dict(zip(t["code"].to_pylist(), t["count"].to_pylist(), strict=True))


def test_count_codes_string_dictionary_and_mask_agree() -> None:
    codes = ["B", "A", "B", None, "C", "B"]
    plain = pa.array(codes, pa.string())
    dic = plain.dictionary_encode()
    assert _counts(count_codes(plain)) == {"A": 1, "B": 3, "C": 1}
    assert _counts(count_codes(dic)) == {"A": 1, "B": 3, "C": 1}
    mask = np.array([True, True, False, True, True, False])
    assert _counts(count_codes(plain, mask)) == {"A": 1, "B": 1, "C": 1}
    assert _counts(count_codes(dic, mask)) == {"A": 1, "B": 1, "C": 1}


def test_map_reduce_counts_equal_whole_count() -> None:
    rng = np.random.default_rng(0)
    codes = np.array([f"C{i}" for i in rng.integers(0, 40, 5000)], dtype=object)
    whole = count_codes(pa.array(codes, pa.string()))
    parts = [
        count_codes(pa.array(p, pa.string()).dictionary_encode()) for p in np.array_split(codes, 7)
    ]
    assert merge_counts(parts).equals(whole)
    assert merge_counts(parts[::-1]).equals(whole)  # order of the reduce does not matter


def test_fit_min_count_max_size_ties_and_ids() -> None:
    counts = pa.table(
        {"code": ["b", "a", "c", "d", "e"], "count": pa.array([5, 5, 9, 1, 2], pa.int64())}
    )
    v = fit_vocabulary(counts, min_count=2)
    # most frequent first; the tie a/b (5) is broken by the code string; d (1) < min_count
    assert v.codes == ("c", "a", "b", "e")
    assert v.tokens[: S.NUM_SPECIAL_TOKENS] == S.SPECIAL_TOKENS
    assert v.id_of("c") == S.NUM_SPECIAL_TOKENS
    assert v.id_of("e") == S.NUM_SPECIAL_TOKENS + 3
    assert v.size == S.NUM_SPECIAL_TOKENS + 4
    capped = fit_vocabulary(counts, min_count=1, max_size=2)
    assert capped.codes == ("c", "a")
    assert capped.counts == (9, 5)


def test_lookup_unknown_and_null_codes_map_to_unk_and_are_counted() -> None:
    v = Vocabulary(["A", "B"])
    arr = pa.array(["A", "Z", None, "B", "Z"], pa.string())
    for a in (arr, arr.dictionary_encode(), pa.chunked_array([arr[:2], arr[2:]])):
        ids, n_unk = v.lookup(a)
        assert ids.tolist() == [3, S.UNK_ID, S.UNK_ID, 4, S.UNK_ID]
        assert n_unk == 3


def test_json_roundtrip_and_content_hash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = Vocabulary(["x", "y", "é"], [3, 2, 1], {"min_count": 1})
    path = str(tmp_path / "vocab.json")
    v.save(path)
    w = Vocabulary.load(path)
    assert w == v and w.hash == v.hash and w.counts == v.counts
    # the hash depends on the token list only, and on its order
    assert Vocabulary(["x", "y", "é"]).hash == v.hash
    assert Vocabulary(["y", "x", "é"]).hash != v.hash
    assert v.hash.startswith("sha256:") and len(v.hash) == len("sha256:") + 64


def test_check_hash_names_both_hashes_and_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = Vocabulary(["x", "y"])
    v.check_hash(v.hash)
    other = Vocabulary(["x", "z"]).hash
    with pytest.raises(VocabularyError) as e:
        v.check_hash(other, source="run/vocab.json")
    msg = str(e.value)
    assert other in msg and v.hash in msg and "run/vocab.json" in msg


def test_edited_vocabulary_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vocab.json"
    Vocabulary(["x", "y"]).save(str(path))
    d = json.loads(path.read_text())
    d["codes"] = ["y", "x"]  # swapped ids, stale hash
    path.write_text(json.dumps(d))
    with pytest.raises(VocabularyError, match="corrupt or was edited"):
        Vocabulary.load(str(path))
    path.write_text("{not json")
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.load(str(path))


def test_invalid_codes_are_refused() -> None:
    with pytest.raises(VocabularyError):
        Vocabulary(["a", "a"])
    with pytest.raises(VocabularyError):
        Vocabulary(["[PAD]"])
