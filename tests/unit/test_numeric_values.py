"""``data.numeric``: per-code quantile bins fitted on train, value-bin tokens, and ``none``
leaving every output as it was."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import ConfigError, DataConfig
from ehrsurv_dist.data.numeric import (
    META_KEY,
    ValueSketch,
    apply_value_bins,
    bin_token,
    fit_edges,
    value_facts,
    vocab_edges,
)
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.data.synth_long import INFORMATIVE_LABS, synthesize_long
from ehrsurv_dist.data.vocab import Vocabulary

N = 40


def _sketch(units: list[tuple[list[str], np.ndarray]]) -> ValueSketch:
    vs = ValueSketch()
    for codes, vals in units:
        keys, bits = value_facts(
            np.zeros(len(vals), np.int64), pa.array(codes), vals, np.ones(len(vals), bool)
        )
        vs.add(keys, bits)
    return vs


def test_edges_are_the_train_quantiles_whatever_the_units() -> None:
    v = np.arange(100.0)
    edges = fit_edges(_sketch([(["A"] * 100, v)]), 10)
    assert edges == {"A": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]}
    # the same values over three units, in another order: the same edges
    rng = np.random.default_rng(0)
    p = rng.permutation(v)
    parts = [(["A"] * 30, p[:30]), (["A"] * 50, p[30:80]), (["A"] * 20, p[80:])]
    assert fit_edges(_sketch(parts[::-1]), 10) == edges
    # a large sample over many units: the sketch stays within 0.02 of the normal deciles
    x = rng.standard_normal(200_000)
    big = _sketch([(["B"] * 2_000, x[i : i + 2_000]) for i in range(0, 200_000, 2_000)])
    assert sum(len(a) for a, _ in big.points["B"]) <= 32 * 128  # 100 units, compressed
    deciles = [-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816]
    np.testing.assert_allclose(fit_edges(big, 10)["B"], deciles, atol=0.02)
    # too few values, or a constant: no bins; NaN values are not counted
    few = _sketch([(["C"] * 10, np.arange(10.0)), (["D"] * 50, np.full(50, 3.0))])
    assert fit_edges(few, 10) == {}
    assert fit_edges(_sketch([(["E"] * 40, np.full(40, np.nan))]), 4) == {}


def test_apply_value_bins() -> None:
    t = pa.table(
        {
            S.SUBJECT_ID: pa.array([1, 1, 1, 1, 1, 1], pa.int64()),
            S.CODE: pa.array(["LAB", "LAB", "LAB", "DX", "LAB", "OTHER"]).dictionary_encode(),
            S.NUMERIC_VALUE: pa.array([0.5, 1.0, 7.0, 3.0, None, 2.0], pa.float32()),
        }
    )
    out = apply_value_bins(
        t, {"LAB": [1.0, 5.0], "DX": [0.0]}, exclude=np.array([False, True, False])
    )
    codes = out[S.CODE].cast(pa.string()).to_pylist()
    # 0.5 < 1 -> Q1, 1.0 (= an edge) -> Q2, 7 -> Q3; DX is excluded; no value / no bins: plain
    assert codes == ["LAB|Q1", "LAB|Q2", "LAB|Q3", "DX", "LAB", "OTHER"]
    assert pa.types.is_dictionary(out.schema.field(S.CODE).type)
    assert bin_token("LAB", 2) == "LAB|Q2"
    assert apply_value_bins(t.drop_columns([S.NUMERIC_VALUE]), {"LAB": [1.0]}).equals(
        t.drop_columns([S.NUMERIC_VALUE])
    )


def test_numeric_bins_config() -> None:
    with pytest.raises(ConfigError, match="numeric_bins"):
        DataConfig(numeric_bins=1)
    assert DataConfig().numeric == "none"


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The long cohort, a copy without numeric_value, and a copy whose held-out and tuning
    values are scaled by 1000."""
    root = tmp_path_factory.mktemp("num")
    base = str(root / "values")
    synthesize_long(base, subjects=N, seed=5, shards=2, workers=1)
    split = pq.read_table(os.path.join(base, S.SUBJECT_SPLITS_PATH))
    not_train = pa.array(
        [
            s
            for s, sp in zip(
                split[S.SUBJECT_ID].to_pylist(), split[S.SPLIT].to_pylist(), strict=True
            )
            if sp != S.TRAIN_SPLIT
        ],
        pa.int64(),
    )
    out = {"values": base}
    for name in ("no_column", "scaled"):
        d = str(root / name)
        shutil.copytree(base, d)
        for f in sorted(Path(d, S.DATA_SUBDIR).glob("*.parquet")):
            t = pq.read_table(f)
            if name == "no_column":
                t = t.drop_columns([S.NUMERIC_VALUE])
            else:
                other = pc.is_in(t[S.SUBJECT_ID], value_set=not_train)
                v = pc.if_else(other, pc.multiply(t[S.NUMERIC_VALUE], 1000.0), t[S.NUMERIC_VALUE])
                t = t.set_column(
                    t.schema.get_field_index(S.NUMERIC_VALUE), S.NUMERIC_VALUE, v.cast(pa.float32())
                )
            pq.write_table(t, f)
        out[name] = d
    return out


def _pipe(cohort: str, numeric: str) -> IngestPipeline:
    task = TaskSpec(
        event_codes=("MEDS_DEATH",), horizon_days=730.0, labels=f"{cohort}/labels/death.parquet"
    )
    data = DataConfig(cohort=cohort, batch_size=8, max_seq_len=512, numeric=numeric)  # type: ignore[arg-type]
    return IngestPipeline(cohort, data, task=task, check_batches=-1)


def _batches(p: IngestPipeline, split: str = S.TRAIN_SPLIT) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in b.items()} for b in p.iter_batches(split)]


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_none_ignores_values_and_quantile_bins_without_values_warns(
    cohorts: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ref = _pipe(cohorts["no_column"], "none")
    ref_vocab = ref.fit().vocab
    ref_b = _batches(ref)
    # none on the cohort with values: the same vocabulary and bit-identical batches
    p = _pipe(cohorts["values"], "none")
    assert p.fit().vocab.hash == ref_vocab.hash
    assert _same(_batches(p), ref_b)
    assert META_KEY not in ref_vocab.meta
    # quantile_bins on a cohort without numeric_value: a warning, and the same outputs
    with caplog.at_level(logging.WARNING, logger="ehrsurv_dist.data.pipeline"):
        q = _pipe(cohorts["no_column"], "quantile_bins")
        assert q.fit().vocab.hash == ref_vocab.hash
    assert "has no numeric_value" in caplog.text
    assert _same(_batches(q), ref_b)


def test_quantile_bins_fit_on_train_saved_and_reused(
    cohorts: dict[str, str], tmp_path: Path
) -> None:
    p = _pipe(cohorts["values"], "quantile_bins")
    vocab = p.fit(vocab_path=str(tmp_path / "vocab.json")).vocab
    edges = vocab_edges(vocab)
    plain = _pipe(cohorts["values"], "none").fit().vocab
    assert vocab.codes[: plain.size - S.NUM_SPECIAL_TOKENS] == plain.codes  # plain ids kept
    # lab codes with >= 20 train values have bins (10 bins: up to 9 edges); no other code does
    labs = {c for c in plain.codes if c.startswith("LOINC/")}
    assert set(edges) <= labs and len(edges) >= 100
    assert {c for c, *_ in INFORMATIVE_LABS} <= set(edges)
    assert all(1 <= len(e) <= 9 and e == sorted(set(e)) for e in edges.values())
    extra = vocab.codes[len(plain.codes) :]
    assert len(extra) == sum(len(e) + 1 for e in edges.values())
    assert all("|Q" in c for c in extra)
    # creatinine (median 1 mg/dL) has its median edge near 1
    cre = edges["LOINC/2160-0"]
    assert 0.6 < cre[len(cre) // 2] < 1.6
    # the batches hold bin tokens where values were, and no lab code without one
    b = _batches(p)
    toks = np.concatenate([x["codes"][x["attention_mask"]] for x in b])
    names = np.asarray(vocab.tokens, dtype=object)[toks]
    is_bin = np.char.find(names.astype(str), "|Q") >= 0
    assert 0.3 < is_bin.mean() < 0.8
    assert not np.any(np.isin(names[~is_bin], list(edges)))  # every lab row has a value
    # held-out / tuning values do not move the edges (fitted on train only)
    scaled = _pipe(cohorts["scaled"], "quantile_bins").fit().vocab
    assert scaled.hash == vocab.hash and vocab_edges(scaled) == edges
    # the saved vocabulary (vocab.json of a run) bins values the same way
    loaded = Vocabulary.load(str(tmp_path / "vocab.json"))
    assert vocab_edges(loaded) == edges and loaded.hash == vocab.hash
    again = _pipe(cohorts["values"], "quantile_bins")
    assert again.fit(loaded).vocab is loaded
    assert _same(_batches(again, S.HELD_OUT_SPLIT), _batches(p, S.HELD_OUT_SPLIT))


def test_a_vocabulary_without_bins_warns(
    cohorts: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    plain = _pipe(cohorts["values"], "none").fit().vocab
    with caplog.at_level(logging.WARNING, logger="ehrsurv_dist.data.pipeline"):
        p = _pipe(cohorts["values"], "quantile_bins")
        p.fit(plain)
    assert "has no value bins" in caplog.text
    ref = _pipe(cohorts["values"], "none")
    ref.fit(plain)
    assert _same(_batches(p), _batches(ref))


def _padded(b: dict[str, Any], layout: str) -> dict[str, Any]:
    """The batch with 16 more token slots (flat) or 3 more visit and 2 more code slots
    (hierarchical), padded by the contract (0 / False)."""
    import torch

    out = dict(b)
    if layout == "flat":
        for k in (S.CODES, S.AGES, S.VISIT_IDS, S.ATTENTION_MASK):
            out[k] = torch.nn.functional.pad(b[k], (0, 16))
    else:
        for k in (S.CODES, S.CODE_MASK):
            out[k] = torch.nn.functional.pad(b[k], (0, 2, 0, 3))
        for k in (S.AGES, S.TIME_DELTAS, S.VISIT_MASK):
            out[k] = torch.nn.functional.pad(b[k], (0, 3))
    return out


@pytest.mark.parametrize("layout", ["flat", "hierarchical"])
def test_bin_tokens_padding_invariance(cohorts: dict[str, str], layout: str) -> None:
    """Batches with bin tokens through the flat BEHRT, hierarchical BEHRT and LSTM: more
    padding changes no real output."""
    import torch

    from ehrsurv_dist.models import (
        behrt_tiny,
        build_survival_model,
        hierarchical_tiny,
        lstm_tiny,
        select_inputs,
    )

    c = cohorts["values"]
    task = TaskSpec(
        event_codes=("MEDS_DEATH",), horizon_days=730.0, labels=f"{c}/labels/death.parquet"
    )
    data = DataConfig(
        cohort=c,
        batch_size=8,
        max_seq_len=128,
        max_visits=40,
        max_codes_per_visit=32,
        numeric="quantile_bins",
    )
    p = IngestPipeline(c, data, task=task, layout=layout, check_batches=-1)  # type: ignore[arg-type]
    vocab = p.fit().vocab
    small = {k: torch.as_tensor(v) for k, v in next(iter(p.iter_batches(S.TRAIN_SPLIT))).items()}
    big = _padded(small, layout)
    names = np.asarray(vocab.tokens, dtype=object)[small[S.CODES].numpy()]
    assert np.any(np.char.find(names.astype(str), "|Q") >= 0)
    torch.manual_seed(0)
    if layout == "flat":
        models = [build_survival_model(behrt_tiny(vocab.size, 144))]
    else:
        models = [
            build_survival_model(
                hierarchical_tiny(vocab.size, max_visits=64, max_codes_per_visit=64)
            ),
            build_survival_model(lstm_tiny(vocab.size)),
        ]
    for m in models:
        m.eval()
        with torch.no_grad():
            a = m(**select_inputs(m, small))
            b = m(**select_inputs(m, big))
        v = a.logits.shape[1]
        assert torch.equal(a.visit_mask, b.visit_mask[:, :v])
        assert not bool(b.visit_mask[:, v:].any())
        torch.testing.assert_close(
            a.logits[a.visit_mask], b.logits[:, :v][a.visit_mask], atol=1e-5, rtol=1e-5
        )


def test_reader_keeps_numeric_value(cohorts: dict[str, str], tmp_path: Path) -> None:
    from ehrsurv_dist.data.meds_read import data_files, read_events_table
    from ehrsurv_dist.errors import CohortError

    fs, files, _ = data_files(cohorts["values"])
    plain = read_events_table(files[0], fs)
    assert plain.column_names == [S.SUBJECT_ID, S.TIME, S.CODE]
    t = read_events_table(files[0], fs, numeric=True)
    assert t.schema.field(S.NUMERIC_VALUE).type == pa.float32()
    assert t.drop_columns([S.NUMERIC_VALUE]).equals(plain)
    raw = pq.read_table(files[0])
    assert t[S.NUMERIC_VALUE].equals(raw[S.NUMERIC_VALUE])
    # absent: an all-null float32 column; float64 is cast; a string column is refused
    fs2, files2, _ = data_files(cohorts["no_column"])
    t2 = read_events_table(files2[0], fs2, numeric=True)
    assert t2[S.NUMERIC_VALUE].null_count == t2.num_rows
    assert t2.schema.field(S.NUMERIC_VALUE).type == pa.float32()
    f64 = str(tmp_path / "f64.parquet")
    pq.write_table(raw.set_column(3, S.NUMERIC_VALUE, raw[S.NUMERIC_VALUE].cast(pa.float64())), f64)
    assert read_events_table(f64, fs, numeric=True)[S.NUMERIC_VALUE].equals(raw[S.NUMERIC_VALUE])
    bad = str(tmp_path / "str.parquet")
    pq.write_table(raw.set_column(3, S.NUMERIC_VALUE, raw[S.NUMERIC_VALUE].cast(pa.string())), bad)
    with pytest.raises(CohortError, match=r"str.parquet: column 'numeric_value' has type string"):
        read_events_table(bad, fs, numeric=True)


def test_vocabulary_hash_covers_the_value_bin_edges(tmp_path: Path) -> None:
    """Same tokens, other edges: another hash, so a run refuses a vocabulary whose bins would
    turn the same value into another token; without bins the hash is the token list's."""
    from ehrsurv_dist.data.numeric import with_value_bins
    from ehrsurv_dist.data.vocab import Vocabulary, VocabularyError

    plain = Vocabulary(["LAB//A", "DX//B"])
    a = with_value_bins(plain, {"LAB//A": [1.0, 2.0]}, 3)
    b = with_value_bins(plain, {"LAB//A": [1.0, 2.5]}, 3)
    assert a.tokens == b.tokens
    assert a.hash != b.hash
    assert plain.hash == Vocabulary(["LAB//A", "DX//B"], meta={"cohort": "x"}).hash
    a.save(str(tmp_path / "a.json"))
    assert Vocabulary.load(str(tmp_path / "a.json")).hash == a.hash
    with pytest.raises(VocabularyError, match="scrambled"):
        b.check_hash(a.hash, source="run")
