"""``data.numeric=quantile_bins`` on real local Ray: the value bins fitted through Ray Data and
the bin-token batches equal the single-process path's, for row-group units and for subjects
dealt over shards (the hash path)."""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data.numeric import vocab_edges
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.data.synth_long import synthesize_long

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def long_cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("numeric") / "long")
    synthesize_long(out, subjects=40, seed=3, shards=2, workers=1)
    return out


@pytest.fixture(scope="module")
def spanning(long_cohort: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The cohort with every subject's rows dealt over 3 shards (row i -> shard i % 3)."""
    out = str(tmp_path_factory.mktemp("numeric") / "spanning")
    shutil.copytree(long_cohort, out, ignore=shutil.ignore_patterns("shard_*.parquet"))
    files = sorted(glob.glob(os.path.join(long_cohort, S.DATA_SUBDIR, "*.parquet")))
    t = pa.concat_tables([pq.read_table(f) for f in files])
    idx = np.arange(t.num_rows)
    for k in range(3):
        pq.write_table(
            t.take(pa.array(idx[idx % 3 == k])), os.path.join(out, S.DATA_SUBDIR, f"s{k}.parquet")
        )
    return out


def _per_sample(batches: Any) -> dict[tuple[int, int], bytes]:
    out: dict[tuple[int, int], bytes] = {}
    for b in batches:
        n = b[S.ATTENTION_MASK].sum(1)
        for r, s in enumerate(b[S.SUBJECT]):
            key = (int(s), int(b[S.PREDICTION_TIME][r]))
            out[key] = b[S.CODES][r, : n[r]].tobytes() + b[S.AGES][r, : n[r]].tobytes()
    return out


@pytest.mark.parametrize("which", ["row_groups", "hash"])
def test_value_bins_on_ray_equal_single_process(
    ray_local: None, long_cohort: str, spanning: str, which: str
) -> None:
    cohort = long_cohort if which == "row_groups" else spanning
    task = TaskSpec(
        event_codes=("MEDS_DEATH",),
        horizon_days=730.0,
        labels=os.path.join(cohort, "labels", "death.parquet"),
    )
    data = DataConfig(cohort=cohort, batch_size=8, max_seq_len=256, numeric="quantile_bins")
    pipe = IngestPipeline(  # caches off: the Ray fit scans (no totals cached by the first fit)
        cohort, data, task=task, rows_per_unit=20_000, check_batches=-1, validation_cache="none"
    )
    assert pipe.plan.mode == which and pipe.plan.num_units >= 2
    single = pipe.fit()
    on_ray = pipe.fit(use_ray=True)
    edges = vocab_edges(single.vocab)
    assert len(edges) >= 50
    assert on_ray.vocab.hash == single.vocab.hash and vocab_edges(on_ray.vocab) == edges
    ray_b = _per_sample(pipe.iter_ray_batches(S.TRAIN_SPLIT, 0))
    one_b = _per_sample(pipe.iter_batches(S.TRAIN_SPLIT, 0))
    assert ray_b == one_b and len(one_b) > 10
