"""The synthetic generator: MEDS-valid output, deterministic, and agreeing with the label code."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.meds import read_events_table, read_outcomes, validate_cohort
from ehrsurv_dist.data.synthetic import PRESETS, HazardParams, generate_block, synthesize
from ehrsurv_dist.data.visits import build_visits
from ehrsurv_dist.errors import OutputError


def _load(cohort: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    fs = pafs.LocalFileSystem()
    files = sorted(glob.glob(os.path.join(cohort, "data", "*.parquet")))
    ev = pa.concat_tables([read_events_table(f, fs) for f in files])
    return (
        ev,
        read_outcomes(os.path.join(cohort, S.OUTCOMES_FILE)),
        pq.read_table(os.path.join(cohort, S.TRUTH_FILE)),
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("synth") / "smoke")
    synthesize(out, "smoke", seed=42)
    return out


def test_every_file_follows_meds(smoke: str) -> None:
    for f in glob.glob(os.path.join(smoke, "data", "*.parquet")):
        meds.DataSchema.validate(pq.read_table(f))  # raises on a schema violation
    meds.SubjectSplitSchema.validate(pq.read_table(os.path.join(smoke, S.SUBJECT_SPLITS_PATH)))
    meds.CodeMetadataSchema.validate(pq.read_table(os.path.join(smoke, S.CODE_METADATA_PATH)))
    with open(os.path.join(smoke, S.DATASET_METADATA_PATH)) as fh:
        meds.DatasetMetadataSchema.validate(json.load(fh))
    rep = validate_cohort(smoke)
    assert rep.ok and not rep.problems, rep.format()
    # every data code is described in codes.parquet
    codes = set(pq.read_table(os.path.join(smoke, S.CODE_METADATA_PATH))["code"].to_pylist())
    ev, _, _ = _load(smoke)
    assert set(ev[S.CODE].to_pylist()) - codes == {S.BIRTH_CODE}


def test_shards_hold_whole_sorted_subjects(smoke: str) -> None:
    seen: set[int] = set()
    for f in sorted(glob.glob(os.path.join(smoke, "data", "*.parquet"))):
        t = pq.read_table(f)
        sid = t[S.SUBJECT_ID].to_numpy()
        assert np.all(np.diff(sid) >= 0)
        assert not (set(sid.tolist()) & seen)
        seen |= set(sid.tolist())


@pytest.mark.parametrize(("preset", "seed"), [("smoke", 42), ("local", 7), ("pod", 3)])
def test_label_code_agrees_with_truth(tmp_path: Path, preset: str, seed: int) -> None:
    """docs/design.md §2: visits derived from the MEDS files == length of the true hazard list."""
    out = str(tmp_path / preset)
    synthesize(out, preset, seed=seed)
    ev, outc, truth = _load(out)
    sv, rej = build_visits(ev, outc)
    assert rej.num_rows == 0
    assert sv.num_subjects == PRESETS[preset].subjects
    assert np.array_equal(sv.subject_id, truth[S.SUBJECT_ID].to_numpy())
    lens = np.diff(np.asarray(truth[S.TRUTH_HAZARD].combine_chunks().offsets))
    assert np.array_equal(sv.num_visits, lens)
    o_ev = outc.sort_by(S.SUBJECT_ID)[S.OUTCOME_EVENT].to_numpy(zero_copy_only=False)
    assert np.array_equal(sv.event, o_ev)
    assert sv.num_visits.max() <= PRESETS[preset].max_visits


def test_deterministic_whatever_the_shard_count(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synthesize(a, "smoke", subjects=9000, seed=5, shards=1, signal=2.0)
    synthesize(b, "smoke", subjects=9000, seed=5, shards=3, signal=2.0)
    assert len(glob.glob(os.path.join(b, "data", "*.parquet"))) == 3
    ea, oa, ta = _load(a)
    eb, ob, tb = _load(b)
    assert ea.equals(eb) and oa.equals(ob) and ta.equals(tb)


def test_signal_and_frailty_knobs() -> None:
    hp1 = HazardParams(signal=1.0, frailty_sd=0.0)
    hp3 = HazardParams(signal=3.0, frailty_sd=0.0)
    b1 = generate_block(0, 500, 1, 11, 50, hp1)
    b3 = generate_block(0, 500, 1, 11, 50, hp3)
    # without frailty the observable hazard is the hazard
    np.testing.assert_array_equal(b1.hazard, b1.hazard_observable)
    # a stronger signal spreads the (observable) logits further from alpha
    lg1 = np.log(b1.hazard_observable / (1 - b1.hazard_observable)) + 2.0
    lg3 = np.log(b3.hazard_observable / (1 - b3.hazard_observable)) + 2.0
    assert np.std(lg3[: len(lg1)]) > 2.0 * np.std(lg1)


def test_outcomes_follow_the_likelihoods_semantics() -> None:
    """The score equation of docs/design.md §2's likelihood holds at the true hazards.

    A subject contributes the intervals t < T (survived) and, for an event, the interval T. If
    the data follow those semantics, the events equal the sum of the true hazards over these
    contributed intervals up to noise: E[sum(event - h)] = 0. A generator whose censored
    subjects had (unobserved) survived interval T would make events exceed it by ~20%.
    """
    hp = HazardParams(signal=3.0)
    b = generate_block(0, 20_000, 1, 5, 50, hp)
    off = b.hazard_offsets
    h = b.hazard.astype(np.float64)
    T = np.diff(off) - 1
    np.testing.assert_array_equal(T, b.last_visit)
    survived = np.add.reduceat(h, off[:-1]) - h[off[1:] - 1]  # sum over t < T
    expected = survived.sum() + h[off[1:] - 1][b.event].sum()
    var = (h * (1 - h)).sum()
    z = (b.event.sum() - expected) / np.sqrt(var)
    assert abs(z) < 4, (int(b.event.sum()), expected, z)


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        synthesize(str(tmp_path), "smoke")
    assert (tmp_path / "x.txt").read_text() == "keep me"


# Digests of generate_block's output taken before it was split into one function per step
# (issue 15): the draws and their order must not change, or `make demo`'s held-out numbers would.
# The hazards are floats from np.exp (may differ in the last bit between CPUs), so they are
# compared by their sums; every integer, boolean and row array is hashed.
@pytest.mark.parametrize(
    ("args", "hp", "digest", "hazard_sums"),
    [
        (
            (0, 300, 10_001, 42, 25),
            HazardParams(),
            "f7fa32066ceb8dd2c5d491422322c1c35e3e04f14bc6657c5055f2b6ad8cebbb",
            (179.63888297602534, 184.20089937746525),
        ),
        (
            (3, 500, 7, 5, 10),
            HazardParams(signal=3.0, frailty_sd=0.0, dropout_per_visit=0.1),
            "05dd315da0dac583a7420db628f191382ea55be4a10b419a317ea916e2448987",
            (277.2395364572294, 277.2395364572294),
        ),
    ],
)
def test_generate_block_draws_are_pinned(args, hp, digest, hazard_sums) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    import hashlib

    b = generate_block(*args, hp)
    h = hashlib.sha256()
    for f in dataclasses.fields(b):
        if f.name in ("hazard", "hazard_observable"):
            continue
        a = np.ascontiguousarray(getattr(b, f.name))
        h.update(f.name.encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    assert h.hexdigest() == digest
    sums = (b.hazard.astype(np.float64).sum(), b.hazard_observable.astype(np.float64).sum())
    np.testing.assert_allclose(sums, hazard_sums, rtol=1e-9)
