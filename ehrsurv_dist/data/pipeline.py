"""Ingest: a MEDS cohort streamed into fixed-shape training batches, on Ray Data or in one process.

The Ray Data module of the data layer: Ray is imported here only, inside the methods that need
it, so the single-process reference path runs without it. Both paths run the same pure
functions on the same **units** of work and so produce bit-identical tensors and batches:

    units (plan.plan_units) ──► read + group + label + vocab + truncate + layout
          │                     (encode.encode_events): a Ray Data map task per balanced run of
          │                     units (plan.task_groups), or a plain loop in one process
          ▼
    Arrow blocks, one row per subject (blocks), epoch-independent: one dataset serves every
    epoch and is what Ray Train's ``datasets=`` gets
          ▼
    collate.batches_from_blocks in the consumer (the driver, or a Ray Train worker through
    shards.KeptShard / shards.iter_shard_batches): bucketing, padding, MLM masks of the epoch,
    always-on checks on the first batches

**Hash mode.** When a subject spans shards (see :mod:`plan`), the rows are hash-partitioned by
subject into buckets: on Ray with a shuffle and ``groupby(bucket).map_groups`` (correct, slower),
in one process by reading everything. The order of appearance of the rows (file, row) is carried
along, so codes keep their order within a visit on every path.

**Epochs.** Everything that changes per epoch (subject shuffle, length bucketing, batch order, MLM
masks) is a function of (seed, epoch, unit, subject) and runs in the consumer.

**Vocabulary.** :meth:`IngestPipeline.fit` scans every unit once (:mod:`scan`: per-unit facts,
summed in the driver) and fits the vocabulary on the train counts. The summed facts are cached
(:mod:`scan_cache`): a later pipeline on the same unchanged cohort with the same scan settings
reuses them without reading the units.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.config import ConfigError, DataConfig
from ehrsurv_dist.data.blocks import Layout
from ehrsurv_dist.data.collate import (
    BatchSpec,
    BatchStats,
    batches_from_blocks,
    collate_block,
    emit_batches,
)
from ehrsurv_dist.data.encode import (
    READ_COLUMNS,
    EncodeSpec,
    bucket_of,
    encode_events,
    encode_unit,
    read_buckets,
    read_unit,
    with_string_codes,
)
from ehrsurv_dist.data.meds import CohortReport
from ehrsurv_dist.data.numeric import fit_edges, vocab_edges, with_value_bins
from ehrsurv_dist.data.numeric import summary as numeric_summary
from ehrsurv_dist.data.plan import ROWS_PER_UNIT, Unit, UnitPlan, plan_units, task_groups
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.data.scan import (
    IngestFit,
    ScanTotals,
    count_unknown_tokens,
    reduce_facts,
    rejects_table,
    scan_events,
)
from ehrsurv_dist.data.scan_cache import cached_totals
from ehrsurv_dist.data.shards import KeptShard, shard_blocks
from ehrsurv_dist.data.validate import Mapper, serial_mapper
from ehrsurv_dist.data.validate_files import FileCheck
from ehrsurv_dist.data.validation_cache import validate_cached
from ehrsurv_dist.data.vocab import Vocabulary, fit_vocabulary

log = logging.getLogger(__name__)

BUCKET = "__bucket"

# Names other packages import from here (they moved to plan/shards/encode).
__all__ = ["READ_COLUMNS", "IngestPipeline", "KeptShard", "task_groups"]

# Ray map functions (module level: pickled by reference) ------------------------------------


def _task_units(batch: pa.Table, plan: UnitPlan, groups: list[list[int]]) -> list[Unit]:
    return [plan.units[u] for t in batch["task"].to_pylist() for u in groups[int(t)]]


def _ray_encode_tasks(
    batch: pa.Table,
    plan: UnitPlan,
    groups: list[list[int]],
    spec: EncodeSpec,
    vocab: Vocabulary,
    split: str | None,
) -> Iterator[pa.Table]:
    """One block per unit (streamed: Ray emits blocks while the task runs)."""
    for u in _task_units(batch, plan, groups):
        yield encode_events(
            read_unit(u, spec.cohort, numeric=spec.reads_values), spec, vocab, split, u.unit_id
        )


def _ray_scan_tasks(
    batch: pa.Table, plan: UnitPlan, groups: list[list[int]], spec: EncodeSpec
) -> pa.Table:
    return pa.concat_tables(
        [
            scan_events(read_unit(u, spec.cohort, numeric=spec.reads_values), spec)
            for u in _task_units(batch, plan, groups)
        ]
    )


def _ray_read_bucketed(
    batch: pa.Table, plan: UnitPlan, groups: list[list[int]], cohort: str, numeric: bool = False
) -> pa.Table:
    parts = []
    for u in _task_units(batch, plan, groups):
        t = with_string_codes(read_unit(u, cohort, with_row=True, numeric=numeric))
        sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
        parts.append(t.append_column(BUCKET, pa.array(bucket_of(sid, plan.num_buckets))))
    return pa.concat_tables(parts)


def _ray_encode_group(
    group: pa.Table, spec: EncodeSpec, vocab: Vocabulary, split: str | None
) -> pa.Table:
    unit = int(group[BUCKET][0].as_py())
    return encode_events(group.drop_columns([BUCKET]), spec, vocab, split, unit)


def _ray_scan_group(group: pa.Table, spec: EncodeSpec) -> pa.Table:
    return scan_events(group.drop_columns([BUCKET]), spec)


def _apply(fn: Callable[[str], FileCheck], item: str) -> FileCheck:
    return fn(item)


def _ray_map_files(fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
    """Validation's per-shard checks as Ray tasks, one per shard (results in shard order)."""
    import ray  # the Ray edge: imported where used, so the module imports without Ray

    task = ray.remote(num_cpus=1)(_apply)
    return list(ray.get([task.remote(fn, x) for x in items]))


def ray_validation_mapper() -> Mapper | None:
    """The parallel mapper of validation (for cohorts over ``validate.PARALLEL_MIN_BYTES``).

    A process connected to Ray outside a placement group (a driver after ``ray.init``): Ray
    tasks, one per shard, on the cluster's free CPUs. Inside a placement group (a Tune trial,
    which captures its child tasks: its CPUs are its trainer's) the serial mapper: the shards
    are checked in the trial's own process. Without Ray: None (``validate.default_mapper``'s
    process pool)."""
    if sys.modules.get("ray") is None:  # never imported: certainly not connected (no import)
        return None
    import ray  # the Ray edge: already imported by whoever started it

    if not ray.is_initialized():
        return None
    if ray.get_runtime_context().get_placement_group_id() is not None:
        return serial_mapper
    return _ray_map_files


def materialized_in_order(ds: Any) -> Any:
    """``ds`` executed into the object store with its blocks in the plan's unit order.

    A map's outputs otherwise come in the order its tasks finish, which differs between
    executions: two runs with the same seed (or a run and its resume, which caches again) would
    train the same batches in another order, and so follow another loss curve. Ordering costs
    nothing here: the whole split is kept before the first epoch reads it. (With several train
    workers, Ray's streaming split still hands each block to whichever rank asks first.)
    """
    ds.context.execution_options.preserve_order = True
    return ds.materialize()


def shuffled_blocks(ds: Any, seed: int) -> Any:
    """``ds`` with its blocks in a random order that changes at every execution (every epoch
    of a training run), reproducibly from ``seed``: Ray Data's ``randomize_block_order``
    reseeded after each execution. Only block references move (no data is copied); the
    consumer reassembles a unit whose blocks come apart (``collate.batches_from_blocks``)."""
    from ray.data import RandomSeedConfig  # the Ray edge

    return ds.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


# --------------------------------------------------------------------------------------------
# The pipeline


class IngestPipeline:
    """A MEDS cohort → per-split batch streams, on Ray Data or in one process.

    Args:
        cohort: cohort directory or pyarrow filesystem URI.
        data: the data configuration (``DataConfig``); defaults if None.
        layout: ``flat`` (BEHRT) or ``hierarchical`` (docs/data.md).
        seed: seed of the shuffles and MLM masks.
        window_batches: batches per length-sorting window (None: ``data.window_batches``).
        pad_multiple: each batch's padded length is a multiple of this (None: ``data``'s,
            resolved for CPU; the training launcher passes the value for its device).
        mlm: add MLM masks (``codes`` masked, ``mlm_labels``).
        rows_per_unit: target rows per unit of work.
        check_batches: contract checks on this many first batches of each iteration (-1: all).
        report: a validation report to reuse; None validates the cohort, or reuses the report
            cached under its fingerprint (:mod:`validation_cache`); the shards are checked in
            parallel: Ray tasks when Ray is up (:func:`ray_validation_mapper`), else a process
            pool for large cohorts.
        validation_cache: where validation reports and :meth:`fit`'s scan totals
            (:mod:`scan_cache`) are cached: None (``$EHRSURV_VALIDATION_CACHE``, else ``auto``:
            the cohort's ``.ehrsurv/validation`` and ``.ehrsurv/scan`` folders when writable,
            else the user cache), ``auto``, ``none`` (always scan) or a folder.
        require_outcomes: False for pretraining without an outcome table.
        ray_remote_args: extra arguments of the Ray Data map tasks (``num_cpus``, ``memory``,
            ...).
        tasks_per_cpu: Ray tasks per cluster CPU (each processes a balanced run of units).
        max_rows_per_task: more tasks if a task would read more rows than this (memory bound).
        block_bytes: target size of the Ray blocks the tasks emit (``target_max_block_size``).
        vocab: a vocabulary to use without :meth:`fit` (e.g. the one saved with a run).
        task: a calendar-axis task (rows are (subject, prediction time) samples, outcomes from
            event codes, no outcome table); None: the visit axis.

    Raises:
        CohortError: the cohort is unusable (as ``CohortReport.raise_if_unusable``).
    """

    def __init__(
        self,
        cohort: str,
        data: DataConfig | None = None,
        *,
        layout: Layout = "flat",
        seed: int = 0,
        window_batches: int | None = None,
        pad_multiple: int | None = None,
        mlm: bool = False,
        rows_per_unit: int = ROWS_PER_UNIT,
        check_batches: int = 8,
        report: CohortReport | None = None,
        require_outcomes: bool = True,
        ray_remote_args: dict[str, Any] | None = None,
        tasks_per_cpu: int = 1,
        max_rows_per_task: int = 4_000_000,
        block_bytes: int = 8 << 20,
        vocab: Vocabulary | None = None,
        task: TaskSpec | None = None,
        validation_cache: str | None = None,
    ) -> None:
        self.cohort = cohort
        self.data = data or DataConfig(cohort=cohort)
        if task is not None and self.data.truncation != "keep_recent":
            raise ConfigError(
                "data.truncation",
                "the calendar axis keeps the most recent history before the prediction time: "
                "use keep_recent",
            )
        if report is None:
            report = validate_cached(
                cohort,
                self.data.outcomes,
                self.data.granularity,
                require_outcomes=require_outcomes,
                task=task,
                parallel=ray_validation_mapper(),
                cache=validation_cache,
            )
        report.raise_if_unusable(self.data.drop_bad_subjects)
        self.report = report
        self.validation_cache = validation_cache
        self.plan = plan_units(cohort, report, rows_per_unit)
        self.spec = EncodeSpec.for_cohort(cohort, self.data, report, layout, task)
        self.layout: Layout = layout
        self.seed = seed
        self.window_batches = window_batches or self.data.window_batches
        self.pad_multiple = pad_multiple or self.data.resolved_pad_multiple(use_gpu=False)
        self.mlm = mlm
        self.check_batches = check_batches
        self.ray_remote_args = dict(ray_remote_args or {})
        self.tasks_per_cpu = max(1, tasks_per_cpu)
        self.block_bytes = max(1, block_bytes)
        self.max_rows_per_task = max(1, max_rows_per_task)
        self.vocab: Vocabulary | None = vocab
        # The calendar axis's day-bin edges, set once they are known (given, or fitted on
        # the train split after :meth:`fit`); batches then carry each sample's bin.
        self.bin_edges: tuple[float, ...] | None = None
        self.fitted: IngestFit | None = None
        log.info(
            "ingest plan: %s units (%s: %s)", self.plan.num_units, self.plan.mode, self.plan.reason
        )

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        vocab: Vocabulary | None = None,
        *,
        use_ray: bool = False,
        vocab_path: str | None = None,
        rejects_path: str | None = None,
    ) -> IngestFit:
        """Scan every unit once: vocabulary (train split only), statistics, rejects.

        The scan's totals are cached (:mod:`scan_cache`): on the same unchanged cohort with the
        same scan settings, no unit is read.

        Args:
            vocab: reuse this vocabulary (fine-tuning on a pretrained one); None fits one.
            use_ray: run the map step as Ray Data tasks (the reduce is the same).
            vocab_path: save the vocabulary JSON here (atomically).
            rejects_path: write the rejects Parquet here (atomically) if any subject is dropped.
        """
        totals = cached_totals(
            self.spec,
            self.plan,
            lambda: reduce_facts(self._scan_ray() if use_ray else self._scan_single()),
            outcomes=self.spec.outcomes if self.spec.outcomes is not None else self.data.outcomes,
            cache=self.validation_cache,
        )
        if vocab is None:
            vocab = fit_vocabulary(
                totals.counts[S.TRAIN_SPLIT],
                self.data.min_count,
                self.data.max_vocab_size,
                meta={"cohort": self.cohort, "fitted_on": S.TRAIN_SPLIT},
            )
            if self.spec.numeric == "quantile_bins":
                vocab = self._with_value_bins(vocab, totals)
        elif self.spec.numeric == "quantile_bins" and not vocab_edges(vocab):
            log.warning(
                "data.numeric=quantile_bins, but the vocabulary passed in has no value bins "
                "(it was fitted with data.numeric=none): numeric values are not used"
            )
        count_unknown_tokens(totals, vocab)
        rejects = rejects_table(self.report.bad_subjects, totals)
        if rejects.num_rows:
            what = "sample(s) (subject, prediction time)" if self.spec.task else "subject(s)"
            log.warning("dropped %d %s; reasons are in the rejects file", rejects.num_rows, what)
            if rejects_path is not None:
                atomic.write_parquet(rejects, rejects_path)
        if vocab_path is not None:
            vocab.save(vocab_path)
        self.vocab = vocab
        self.fitted = IngestFit(vocab, totals.counts, totals.stats, rejects, totals.event_days)
        return self.fitted

    def _with_value_bins(self, vocab: Vocabulary, totals: ScanTotals) -> Vocabulary:
        """The vocabulary with per-code quantile bins of the train values (data.numeric)."""
        edges = fit_edges(totals.values, self.data.numeric_bins)
        if not edges:
            log.warning(
                "data.numeric=quantile_bins, but cohort %s has no numeric_value in its train "
                "split (no column, or every value null or too few per code): numeric values "
                "are not used",
                self.cohort,
            )
            return vocab
        out = with_value_bins(vocab, edges, self.data.numeric_bins)
        log.info("value bins: %s", numeric_summary(out))
        return out

    def _scan_single(self) -> Iterator[pa.Table]:
        for _, table in self.unit_tables():
            yield scan_events(table, self.spec)

    def _scan_ray(self) -> Iterator[pa.Table]:
        ds = self._ray_map(_ray_scan_tasks, _ray_scan_group, {"spec": self.spec})
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")

    # -- batches ---------------------------------------------------------------------------
    def batch_spec(self, batch_size: int | None = None, **overrides: Any) -> BatchSpec:
        """The consumer-side parameters (pass it to :func:`collate.batches_from_blocks`)."""
        spec = BatchSpec(
            layout=self.layout,
            batch_size=batch_size or self.data.batch_size,
            window_batches=self.window_batches,
            pad_multiple=self.pad_multiple,
            max_seq_len=self.data.max_seq_len,
            max_visits=self.data.max_visits,
            max_codes_per_visit=self.data.max_codes_per_visit,
            seed=self.seed,
            mlm_vocab_size=self._vocab().size if self.mlm else None,
            check_batches=self.check_batches,
            bin_edges=self.bin_edges,
        )
        return replace(spec, **overrides) if overrides else spec

    def _vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise RuntimeError("call fit() (or pass a vocabulary to fit) before reading batches")
        return self.vocab

    def unit_tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(unit id, every row of the unit's subjects), in unit order, one process."""
        if self.plan.mode != "hash":
            for u in self.plan.units:
                yield u.unit_id, read_unit(u, self.cohort, numeric=self.spec.reads_values)
            return
        yield from read_buckets(self.plan, self.cohort, self.spec.reads_values)

    def blocks(self, split: str | None) -> Iterator[pa.Table]:
        """Arrow blocks of ``split`` (None = all subjects), one process, unit order."""
        vocab = self._vocab()
        for unit_id, table in self.unit_tables():
            yield encode_events(table, self.spec, vocab, split, unit_id)

    def iter_batches(
        self,
        split: str | None,
        epoch: int = 0,
        *,
        batch_size: int | None = None,
        stats: BatchStats | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The single-process reference path: plain Python over the Parquet files.

        The blocks never leave this process, so they skip the Arrow encoding; the batches are
        the same as :meth:`iter_ray_batches` gives for the same split, seed and epoch (the batch
        order may differ, since Ray delivers units as they finish).
        """
        spec = self.batch_spec(batch_size)
        vocab = self._vocab()
        st = stats if stats is not None else BatchStats()
        for unit_id, table in self.unit_tables():
            block = encode_unit(table, self.spec, vocab, split)
            yield from emit_batches(collate_block(block, spec, epoch, unit_id), spec, st)

    # -- Ray -------------------------------------------------------------------------------
    def num_tasks(self) -> int:
        """Tasks per dataset: ``tasks_per_cpu`` per cluster CPU, more if tasks would exceed
        ``max_rows_per_task`` rows. Few, balanced tasks: Ray Data adds a fixed cost per task and
        delivers outputs in ~100 ms scheduling rounds."""
        import ray  # the Ray edge: imported where used, so the module imports without Ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1
        total = sum(u.num_rows for u in self.plan.units)
        return max(cpus * self.tasks_per_cpu, math.ceil(total / self.max_rows_per_task))

    def _ray_map(
        self,
        task_fn: Any,
        group_fn: Any,
        kwargs: dict[str, Any],
        block_order_seed: int | None = None,
    ) -> Any:
        """Units → Ray Data map tasks (a balanced run of units per task); in hash mode, read
        tasks, then a shuffle on the bucket and one ``map_groups`` call per bucket. With
        ``block_order_seed``, the tasks (hash mode: the buckets) come in a new random order at
        every execution (see :func:`shuffled_blocks`)."""
        import ray.data  # the Ray edge: imported where used, so the module imports without Ray
        from ray.data.context import ShuffleStrategy

        # hash mode reorders the buckets after its shuffle instead (below)
        unit_seed = block_order_seed if self.plan.mode != "hash" else None
        # A new unit order: one unit per task, so the shuffle of the tasks is one of the units
        # (a task reads its run of units in plan order: with a few long runs, bounded epochs
        # would start from nearly the same units every time).
        n_tasks = len(self.plan.units) if unit_seed is not None else self.num_tasks()
        groups = task_groups(self.plan, n_tasks)
        items = [{"task": i} for i in range(len(groups))]
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        if unit_seed is not None:
            # the one-item blocks of the task list, before the map: the map still streams
            ds = shuffled_blocks(ds, unit_seed)
        common = {"plan": self.plan, "groups": groups}
        if self.plan.mode != "hash":
            ds = ds.map_batches(
                task_fn,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={**common, **kwargs},
                **self.ray_remote_args,
            )
            # One map operator, nothing to reserve CPUs for: with reservations on, Ray Data
            # caps this map at one task at a time on a small (2-CPU) cluster (measured: 10
            # tasks of 50 ms ran one after another in 0.84 s; 0.40 s without reservations).
            ds.context.op_resource_reservation_enabled = False
            # Small blocks: a task's units leave as they are done (the consumer starts early
            # and its memory does not grow with the task). Ray only cuts a block between
            # rows, i.e. between subjects (the consumer reassembles a unit Ray split).
            ds.context.target_max_block_size = self.block_bytes
            return ds
        ds = ds.map_batches(
            _ray_read_bucketed,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={**common, "cohort": self.cohort, "numeric": self.spec.reads_values},
            **self.ray_remote_args,
        )
        # A sort-based shuffle: on small and mid-size cohorts it starts in a fraction of the
        # time of the actor-based hash shuffle (0.5 s vs 4-11 s on the test cohort, 2 CPUs).
        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ds = ds.groupby(BUCKET, num_partitions=self.plan.num_buckets).map_groups(
            group_fn, batch_format="pyarrow", fn_kwargs=kwargs, **self.ray_remote_args
        )
        # hash mode shuffles every row anyway: the buckets' blocks are reordered after it
        return ds if block_order_seed is None else shuffled_blocks(ds, block_order_seed)

    def dataset(self, split: str | None, *, block_order_seed: int | None = None) -> Any:
        """A lazy Ray Dataset of ``split`` (None = all subjects): Arrow blocks, one row per
        subject, epoch-independent, so one dataset serves every epoch and can be passed to Ray
        Train's ``datasets=``; batches come from
        ``collate.batches_from_blocks(blocks, self.batch_spec(), epoch)`` in the consumer (see
        :mod:`shards`).

        Args:
            split: split name, or None for all subjects.
            block_order_seed: the units come in a new random order at every execution (every
                epoch), seeded by this: for epochs that stop early
                (``train.max_steps_per_epoch``) and must not see the same first units every
                time. None: the plan's order.
        """
        kwargs = {"spec": self.spec, "vocab": self._vocab(), "split": split}
        return self._ray_map(_ray_encode_tasks, _ray_encode_group, kwargs, block_order_seed)

    def iter_ray_batches(
        self,
        split: str | None,
        epoch: int = 0,
        *,
        dataset: Any = None,
        batch_size: int | None = None,
        prefetch_blocks: int = 2,
        stats: BatchStats | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``split`` through Ray Data (needs ``ray.init`` first): the training path,
        Ray Data blocks collated in this process.

        Args:
            split: split name, or None for all subjects.
            epoch: selects fresh shuffles and masks.
            dataset: a dataset (or a Ray Train shard / ``DataIterator``) from :meth:`dataset`;
                built if None.
            batch_size: override ``data.batch_size``.
            prefetch_blocks: blocks Ray prefetches ahead of the consumer.
            stats: filled while iterating.
        """
        ds = dataset if dataset is not None else self.dataset(split)
        yield from batches_from_blocks(
            shard_blocks(ds, prefetch_blocks), self.batch_spec(batch_size), epoch, stats
        )
