"""``data.cache``: keep the encoded splits in Ray's object store, or stream them every epoch.

Caching (one Ray Data execution per split, kept for every epoch) is what makes epochs cheap;
it needs the encoded train and tuning splits to fit in the object store. Streaming re-reads and
re-encodes the Parquet files every epoch with memory bounded by Ray Data's backpressure, for
cohorts whose encoded splits do not fit. ``data.cache: auto`` (the default) decides from the
cohort scan (:class:`~ehrsurv_dist.data.scan.IngestFit` statistics) before any block is made:

    estimate = BYTES_PER_TOKEN x tokens_kept + BYTES_PER_VISIT x visits_kept
               + BYTES_PER_ROW x rows                                   (train + tuning)

``tokens_kept`` and ``visits_kept`` are what the layout keeps after truncation (the scan counts
them); a flat block holds 12 bytes per token (``codes`` int32, ``ages`` float32, ``visit_ids``
int32), a hierarchical one 4 per token (``codes``) plus 12 per visit (``ages``,
``time_deltas``, ``visit_sizes``); a row's labels and list offsets take under 100 bytes, so the
estimate is an upper bound. ``auto`` caches
when the estimate is at most :data:`AUTO_FRACTION` of the cluster's object store (the rest is
for the blocks in flight, checkpoints and the other splits' reads), else streams. ``true`` on
splits larger than the whole store is refused with advice (Ray would spill the cache to disk
and read it back every epoch: slower than streaming). Pure: no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import ConfigError

BYTES_PER_TOKEN = {"flat": 12, "hierarchical": 4}
BYTES_PER_VISIT = {"flat": 0, "hierarchical": 12}
BYTES_PER_ROW = 100
AUTO_FRACTION = 0.5
SPLITS = (S.TRAIN_SPLIT, S.TUNING_SPLIT)


@dataclass(frozen=True)
class CacheChoice:
    """Whether the splits are cached, and the one line that says why."""

    cache: bool
    estimate_bytes: int
    store_bytes: float
    reason: str


def encoded_bytes(stats: Mapping[str, Mapping[str, int]], layout: str) -> int:
    """Upper bound of the encoded train and tuning splits' size in the object store."""
    per_token = BYTES_PER_TOKEN[layout]
    per_visit = BYTES_PER_VISIT[layout]
    return sum(
        per_token * int(stats[s]["tokens_kept"])
        + per_visit * int(stats[s]["visits_kept"])
        + BYTES_PER_ROW * int(stats[s]["subjects"])
        for s in SPLITS
        if s in stats
    )


def decide_cache(
    setting: bool | str,
    stats: Mapping[str, Mapping[str, int]],
    layout: str,
    store_bytes: float,
) -> CacheChoice:
    """``data.cache`` (``True``, ``False`` or ``"auto"``) decided for splits with these scan
    statistics on a cluster whose object store holds ``store_bytes`` (0: unknown).

    Raises:
        ConfigError: ``true`` while the estimate exceeds the whole object store.
    """
    est = encoded_bytes(stats, layout)
    mb = est / 2**20
    store_mb = store_bytes / 2**20
    size = f"train + tuning splits ~{mb:,.0f} MB encoded, object store {store_mb:,.0f} MB"
    if setting is False:
        return CacheChoice(False, est, store_bytes, f"data.cache=false: streaming ({size})")
    if setting is True:
        if store_bytes > 0 and est > store_bytes:
            raise ConfigError(
                "data.cache",
                f"true, but the {size}: the cache would be spilled to disk and read back "
                "every epoch. Set data.cache=auto or false (stream the splits every epoch), "
                "or give Ray a larger object store (ray.object_store_mb for a local Ray; "
                "`ray start --object-store-memory` on a cluster)",
            )
        return CacheChoice(True, est, store_bytes, f"data.cache=true: caching ({size})")
    if store_bytes <= 0 or est <= AUTO_FRACTION * store_bytes:
        return CacheChoice(True, est, store_bytes, f"data.cache=auto: caching ({size})")
    return CacheChoice(
        False,
        est,
        store_bytes,
        f"data.cache=auto: streaming, re-reading the cohort every epoch ({size}; caching "
        f"needs at most {AUTO_FRACTION:.0%} of the store)",
    )
