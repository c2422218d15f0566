"""``data.cache``: the encoded-size estimate bounds the real blocks, and auto/true/false decide
as documented (pure: no Ray)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import ConfigError, DataConfig, load_config
from ehrsurv_dist.data.cache_plan import (
    AUTO_FRACTION,
    BYTES_PER_ROW,
    BYTES_PER_TOKEN,
    decide_cache,
    encoded_bytes,
)
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.synth_long import synthesize_long
from ehrsurv_dist.jobspec import JobSpec

STATS = {
    S.TRAIN_SPLIT: {"subjects": 1_000, "tokens": 900_000, "tokens_kept": 400_000, "visits_kept": 9},
    S.TUNING_SPLIT: {"subjects": 200, "tokens": 200_000, "tokens_kept": 80_000, "visits_kept": 1},
    S.HELD_OUT_SPLIT: {"subjects": 10**6, "tokens": 10**9, "tokens_kept": 10**9},  # not read
}
EST = 12 * 480_000 + BYTES_PER_ROW * 1_200


def test_estimate_counts_train_and_tuning_kept_tokens_only() -> None:
    assert encoded_bytes(STATS, "flat") == EST
    assert encoded_bytes(STATS, "hierarchical") == 4 * 480_000 + 12 * 10 + BYTES_PER_ROW * 1_200


def test_auto_caches_what_fits_in_its_share_of_the_store_and_streams_the_rest() -> None:
    fits = decide_cache("auto", STATS, "flat", EST / AUTO_FRACTION)
    assert fits.cache and "auto: caching" in fits.reason
    big = decide_cache("auto", STATS, "flat", EST / AUTO_FRACTION - 1)
    assert not big.cache and "auto: streaming" in big.reason and "object store" in big.reason
    assert decide_cache("auto", STATS, "flat", 0).cache  # store size unknown: as before


def test_false_streams_and_true_caches_until_the_whole_store_is_too_small() -> None:
    assert not decide_cache(False, STATS, "flat", 10 * EST).cache
    assert decide_cache(True, STATS, "flat", EST).cache  # more than auto's share: still cached
    with pytest.raises(ConfigError, match=r"data\.cache.*auto or false.*object_store_mb"):
        decide_cache(True, STATS, "flat", EST - 1)


def test_cache_setting_parses_auto_true_false_and_refuses_others() -> None:
    assert DataConfig().cache == "auto"
    for text, want in (("auto", "auto"), ("true", True), ("false", False)):
        spec = load_config(JobSpec, None, [f"data.cache={text}"])
        assert spec.data.cache == want
    with pytest.raises(ConfigError, match=r"data\.cache"):
        load_config(JobSpec, None, ["data.cache=sometimes"])
    with pytest.raises(ConfigError, match=r"ray\.object_store_mb"):
        load_config(JobSpec, None, ["ray.object_store_mb=50"])
    with pytest.raises(ConfigError, match=r"train\.max_steps_per_epoch"):
        load_config(JobSpec, None, ["train.max_steps_per_epoch=0"])


@pytest.mark.parametrize("layout", ["flat", "hierarchical"])
def test_estimate_bounds_the_real_encoded_blocks_of_long_histories(
    tmp_path: Path, layout: str
) -> None:
    """On long lab-heavy histories (most subjects truncated), the scan's tokens_kept is the
    exact token count of the flat blocks, and the estimate bounds the blocks' Arrow size
    without being loose by more than 2x."""
    cohort = str(tmp_path / "long")
    synthesize_long(cohort, subjects=30, seed=4, shards=2, workers=1)
    data = DataConfig(cohort=cohort, max_seq_len=200, max_visits=10_000)
    pipe = IngestPipeline(cohort, data, layout=layout, validation_cache="none")  # type: ignore[arg-type]
    fit = pipe.fit()
    real = 0
    for split in (S.TRAIN_SPLIT, S.TUNING_SPLIT):
        blocks = list(pipe.blocks(split))
        real += sum(b.nbytes for b in blocks)
        codes = sum(int(pc.sum(pc.list_value_length(b["codes"])).as_py() or 0) for b in blocks)
        if layout == "flat":
            assert codes == fit.stats[split]["tokens_kept"]
            assert fit.stats[split]["tokens_kept"] < fit.stats[split]["tokens"]  # truncated
    est = encoded_bytes(fit.stats, layout)
    assert real <= est <= 2 * real
    assert BYTES_PER_TOKEN[layout] * fit.stats[S.TRAIN_SPLIT]["tokens_kept"] < est
