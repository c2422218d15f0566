"""Typed job configuration: dataclasses per concern, YAML files and dotted ``key=value`` overrides.

A job's configuration is a tree of plain dataclasses, one per concern (``DataConfig``,
``RayConfig``, ...). Every field is declared with :func:`option` (a leaf with a default and a help
string) or :func:`section` (a nested dataclass), and each dataclass checks its own values in
``__post_init__``, raising :class:`ConfigError` with the name of the offending field.

Values resolve in this order, later wins::

    dataclass defaults < base mapping < YAML file (jobs/NAME.yaml) < overrides (train.lr=3e-4)

so a job YAML holds only what differs from the defaults. The resolved tree is type-checked against
the annotations (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, nested dataclasses) and every error names the
dotted key, e.g. ``jobs/x.yaml: train.epochs: expected int, got 'abc' (str)``.

Adding a field: declare it on its dataclass with :func:`option` and a help string, and add a check
to that class's ``__post_init__`` if some values are invalid. Adding a section: write a new
``@dataclass(kw_only=True)`` class the same way and hang it on its parent with :func:`section`.
Nothing else needs registering: loading, overrides, dumping and :func:`describe` follow the
annotations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

# The loader and the error type live in their own modules; they are re-exported here so that a
# job's config is one import: `from ehrsurv_dist.config import load_config, option, ...`.
from ehrsurv_dist.config_load import (
    Override,
    apply_overrides,
    describe,
    dump_yaml,
    format_help,
    load_config,
    to_dict,
)
from ehrsurv_dist.errors import ConfigError, require

__all__ = [
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "Override",
    "PRESETS",
    "Preset",
    "RayConfig",
    "SynthConfig",
    "apply_overrides",
    "describe",
    "dump_yaml",
    "format_help",
    "load_config",
    "option",
    "require",
    "section",
    "to_dict",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Declaring fields
# --------------------------------------------------------------------------------------------


def option(default: T, help: str) -> T:
    """A config leaf with a default value and a help string (shown by ``describe``).

    Mutable defaults (lists, dicts, sets) are copied for each instance.
    """
    if not help.strip():
        raise TypeError("option(): help must be a non-empty string")
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(factory: Callable[[], T], help: str) -> T:
    """A nested config dataclass, built from its own defaults unless configured."""
    if not help.strip():
        raise TypeError("section(): help must be a non-empty string")
    return field(default_factory=factory, metadata={"help": help})


# --------------------------------------------------------------------------------------------
# Concern dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataConfig:
    """Reading a MEDS cohort and turning each subject into a batch row."""

    cohort: str = option(
        "", "Path or pyarrow filesystem URI of a MEDS cohort (the CLI's --cohort sets it)."
    )
    outcomes: str | None = option(
        None, "Outcome table (subject_id, event, time); null means COHORT/outcomes.parquet."
    )
    granularity: Literal["day", "hour", "minute", "second"] = option(
        "day", "A visit is the events that share their timestamp truncated to this unit."
    )
    max_seq_len: int = option(512, "Most input tokens per subject (> 0).")
    truncation: Literal["keep_recent", "keep_oldest"] = option(
        "keep_recent", "Which end of a too-long history is kept."
    )
    max_visits: int = option(
        256, "Most visits per subject (> 0); truncation decides which end is kept."
    )
    max_codes_per_visit: int = option(32, "Most codes kept per visit (> 0).")
    min_count: int = option(1, "A code enters the vocabulary if seen this often in train (>= 1).")
    max_vocab_size: int | None = option(
        None, "Keep only the most frequent codes, up to this many (> 0); null means no cap."
    )
    batch_size: int = option(32, "Subjects per batch, per worker (> 0).")
    pad_multiple: int | None = option(
        None,
        "Round each batch's padded length up to a multiple of this (> 0). null = auto: 8 when "
        "training on GPUs (tensor-core tiles), 1 on CPU, where rounding buys nothing and short "
        "EHR histories would lose a third of every batch to padding (docs/design.md).",
    )
    window_batches: int = option(
        64,
        "Length bucketing: sort subjects by length within windows of this many batches, then "
        "shuffle the batch order (> 0; 1 = no bucketing).",
    )
    cache: bool | Literal["auto"] = option(
        "auto",
        "Encode each split once and keep it in Ray's object store for every epoch (compact: "
        "one row per subject): true; false re-reads and re-encodes the Parquet files every "
        "epoch (streaming: for cohorts larger than the object store); auto (default) caches "
        "when the train and tuning splits' encoded size (an upper bound from the cohort scan) "
        "fits in half of the cluster's object store, else streams, and says which in one "
        "line. true on splits larger than the whole object store is refused with advice "
        "(docs/ingest.md).",
    )
    worker_cache_mb: float = option(
        512.0,
        "A train worker keeps the blocks of a split it reads whole every epoch (the train "
        "split of a 1-worker run; the validation split in every run) after its first complete "
        "read, up to this many MB per split, and collates later epochs from them, instead of "
        "starting a Ray Data execution in the worker every epoch (>= 0; 0 = never keep). The "
        "kept blocks are the object store's copies, pinned while kept. Needs data.cache; a "
        "train split divided between workers is read through Ray Data every epoch.",
    )
    prefetch_batches: int = option(
        4,
        "Batches a train worker buckets, pads and masks ahead in a background thread, "
        "overlapping collation with the training step; the thread of the next epoch starts "
        "while the current one is validated (>= 0; 0 = inline, no look-ahead).",
    )
    drop_bad_subjects: bool = option(
        False,
        "Drop subjects that fail validation, writing them to a rejects file, instead of "
        "refusing the cohort.",
    )
    split_seed: int = option(0, "Seed for any split drawn by the pipeline (>= 0).")
    numeric: Literal["none", "quantile_bins"] = option(
        "none",
        "Numeric values (MEDS numeric_value) as inputs: none ignores them; quantile_bins "
        "fits per-code quantile bins on the train split (saved in the run's vocab.json) and "
        "makes a row with a value the token CODE|Qk of its code and bin (docs/models.md).",
    )
    numeric_bins: int = option(10, "Quantile bins per code for data.numeric=quantile_bins (>= 2).")

    def __post_init__(self) -> None:
        require(self.numeric_bins >= 2, "numeric_bins", f"must be >= 2, got {self.numeric_bins}")
        for name in (
            "max_seq_len",
            "max_visits",
            "max_codes_per_visit",
            "batch_size",
            "window_batches",
        ):
            value = getattr(self, name)
            require(value > 0, name, f"must be > 0, got {value}")
        require(self.min_count >= 1, "min_count", f"must be >= 1, got {self.min_count}")
        require(
            self.worker_cache_mb >= 0,
            "worker_cache_mb",
            f"must be >= 0, got {self.worker_cache_mb}",
        )
        require(
            self.prefetch_batches >= 0,
            "prefetch_batches",
            f"must be >= 0, got {self.prefetch_batches}",
        )
        require(
            self.pad_multiple is None or self.pad_multiple > 0,
            "pad_multiple",
            f"must be > 0 or null, got {self.pad_multiple}",
        )
        require(
            self.max_vocab_size is None or self.max_vocab_size > 0,
            "max_vocab_size",
            f"must be > 0 or null, got {self.max_vocab_size}",
        )
        require(self.split_seed >= 0, "split_seed", f"must be >= 0, got {self.split_seed}")
        require(
            self.outcomes is None or self.outcomes != "",
            "outcomes",
            "must be a path or null, got ''",
        )

    def resolved_pad_multiple(self, use_gpu: bool = False) -> int:
        """``pad_multiple``, or its automatic value: 8 on GPUs, 1 on CPU."""
        if self.pad_multiple is not None:
            return self.pad_multiple
        return 8 if use_gpu else 1


@dataclass(frozen=True)
class Preset:
    """A size of synthetic cohort (``ehrsurv synth --preset``)."""

    subjects: int
    max_visits: int  # planned visits per subject are capped at this
    shards: int  # data/ Parquet shards


PRESETS: dict[str, Preset] = {
    "smoke": Preset(200, 25, 1),
    "local": Preset(2_000, 50, 2),
    "pod": Preset(20_000, 80, 4),
    # calendar axis only: long lab-heavy histories (data/synth_long.py); max_visits unused
    "long": Preset(2_000, 0, 2),
}


@dataclass(kw_only=True)
class SynthConfig:
    """The synthetic cohort generator (``ehrsurv synth``)."""

    preset: Literal["smoke", "local", "pod", "long"] = option(
        "smoke",
        "Size preset: smoke (seconds), local (a laptop), pod (a cluster), long (calendar axis "
        "only: thousands of records per subject, lab values).",
    )
    subjects: int | None = option(None, "Number of subjects (> 0); null means the preset's.")
    seed: int = option(42, "Generator seed (>= 0); the same seed gives the same cohort.")
    shards: int | None = option(
        None, "Number of Parquet data shards (> 0); null means the preset's."
    )
    signal: float = option(1.0, "Multiplies the hazard's feature coefficients (> 0).")
    frailty: float = option(
        0.5, "Standard deviation of the unobserved per-subject log-frailty (>= 0)."
    )
    dropout: float = option(0.04, "Per-visit probability of loss to follow-up, in [0, 1).")

    def __post_init__(self) -> None:
        for name in ("subjects", "shards"):
            value = getattr(self, name)
            require(value is None or value > 0, name, f"must be > 0 or null, got {value}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.signal > 0, "signal", f"must be > 0, got {self.signal}")
        require(self.frailty >= 0, "frailty", f"must be >= 0, got {self.frailty}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True)
class RayConfig:
    """Where Ray runs."""

    address: str | None = option(
        None,
        "Ray cluster address ('auto', 'ray://host:10001'); null means RAY_ADDRESS if set, "
        "else an in-process local Ray.",
    )
    num_cpus: int | None = option(
        None, "CPUs for an in-process local Ray (> 0); null means all of this machine's."
    )
    object_store_mb: int | None = option(
        None,
        "Object store size of an in-process local Ray, in MB (>= 80); null means Ray's "
        "default (30% of the machine's memory). A cluster's is set when its nodes start "
        "(`ray start --object-store-memory BYTES`).",
    )

    def __post_init__(self) -> None:
        require(
            self.address is None or self.address.strip() != "",
            "address",
            "must be an address or null, got ''",
        )
        require(
            self.num_cpus is None or self.num_cpus > 0,
            "num_cpus",
            f"must be > 0 or null, got {self.num_cpus}",
        )
        require(
            self.object_store_mb is None or self.object_store_mb >= 80,
            "object_store_mb",
            f"must be >= 80 (Ray's minimum is 75 MB) or null, got {self.object_store_mb}",
        )


@dataclass(kw_only=True)
class JobConfig:
    """A training job: ``ehrsurv pretrain|finetune|tune --config jobs/NAME.yaml``."""

    name: str = option("ehrsurv", "Job name, used in run and Ray job names.")
    seed: int = option(0, "Global seed for initialisation, masking and shuffling (>= 0).")
    data: DataConfig = section(DataConfig, "Cohort reading and batching.")
    ray: RayConfig = section(RayConfig, "Ray cluster connection.")

    def __post_init__(self) -> None:
        require(self.name.strip() != "", "name", "must be non-empty")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
