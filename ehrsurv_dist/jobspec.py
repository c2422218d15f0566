"""The job file: what `ehrsurv pretrain | finetune | tune` read (``jobs/*.yaml`` + overrides).

One typed section per concern, on top of :class:`~ehrsurv_dist.config.JobConfig` (name, seed,
data, ray). Every field has help text; ``ehrsurv config`` prints them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ehrsurv_dist.config import ConfigError, JobConfig, option, require, section
from ehrsurv_dist.models.config import AttentionMode, VisitPooling
from ehrsurv_dist.train.engine import EngineConfig


@dataclass(kw_only=True)
class ModelSpec:
    """Which survival (or pretraining) model to build."""

    arch: Literal["behrt", "hierarchical", "lstm"] = option(
        "behrt", "Model family: flat BEHRT, hierarchical BEHRT, or the LSTM baseline."
    )
    size: Literal["tiny", "small", "medium", "large", "xlarge"] = option(
        "small",
        "Preset size (docs/models.md; tiny is for CPU tests and smoke runs; xlarge: ~115M "
        "parameters, BERT-base width at 16 layers, for ZeRO-3).",
    )
    attention: AttentionMode = option(
        "visit_causal",
        "visit_causal: visit t sees visits <= t (no leakage, docs/design.md §3); bidirectional: "
        "seed parity, leaks the sequence end.",
    )
    dropout: float = option(0.1, "Dropout in embeddings and transformer blocks, in [0, 1).")
    sinusoidal: bool = option(False, "Fixed sinusoidal positions instead of learned ones.")
    visit_pooling: VisitPooling = option(
        "mean", "How token states become a visit state for the hazard head (flat BEHRT)."
    )

    def __post_init__(self) -> None:
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True)
class FinetuneSpec:
    """Survival fine-tuning: strategy and loss."""

    strategy: Literal["frozen", "lora", "full"] = option(
        "lora", "frozen: head only; lora: low-rank adapters on q/k/v/o (+ head); full: everything."
    )
    loss: Literal["nll", "rank", "hybrid", "cox"] = option(
        "nll", "Survival loss: likelihood, pairwise ranking, nll + lambda_rank*rank, or Cox."
    )
    lambda_rank: float = option(0.1, "Ranking weight of the hybrid loss (>= 0).")
    margin: float = option(0.1, "Ranking margin (>= 0).")
    rank_loss: Literal["hinge", "logistic"] = option(
        "hinge", "Ranking term: the seed's hinge, or a smooth logistic variant."
    )
    curriculum_epochs: int = option(
        0, "Ramp lambda_rank linearly from 0 over this many epochs (0 = constant)."
    )
    risk_score: Literal["mean_hazard", "horizon", "first_n"] = option(
        "mean_hazard",
        "Scalar risk used by the ranking loss and by Harrell/Uno C (docs/design.md §4).",
    )
    risk_k: int = option(10, "k for risk_score=horizon: risk = 1 - S(min(k, T)).")
    risk_n: int = option(10, "n for risk_score=first_n: mean hazard of the first n visits.")
    lora_rank: int = option(16, "LoRA rank r (> 0).")
    lora_alpha: float = option(32.0, "LoRA scale numerator: the update is (alpha / r) * B A x.")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input, in [0, 1).")
    lora_ffn: bool = option(False, "Also adapt the feed-forward layers.")
    train_embeddings: bool = option(
        False, "With lora: also train the embeddings (set true when there is no pretraining)."
    )
    init: str | None = option(
        None, "Pretrained run directory whose exported encoder initialises the model."
    )

    def __post_init__(self) -> None:
        require(self.lambda_rank >= 0, "lambda_rank", f"must be >= 0, got {self.lambda_rank}")
        require(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")
        require(self.lora_rank > 0, "lora_rank", f"must be > 0, got {self.lora_rank}")
        require(self.risk_k > 0, "risk_k", f"must be > 0, got {self.risk_k}")
        require(self.risk_n > 0, "risk_n", f"must be > 0, got {self.risk_n}")
        require(
            0 <= self.lora_dropout < 1,
            "lora_dropout",
            f"must be in [0, 1), got {self.lora_dropout}",
        )


@dataclass(kw_only=True)
class PretrainSpec:
    """Self-supervised pretraining of the BEHRT encoder."""

    objective: Literal["mlm", "nvp", "joint"] = option(
        "joint", "Masked-code modelling, next-visit prediction, or their weighted sum."
    )
    mlm_weight: float = option(1.0, "Weight of the MLM loss in joint pretraining (>= 0).")
    nvp_weight: float = option(1.0, "Weight of the NVP loss in joint pretraining (>= 0).")

    def __post_init__(self) -> None:
        require(self.mlm_weight >= 0, "mlm_weight", f"must be >= 0, got {self.mlm_weight}")
        require(self.nvp_weight >= 0, "nvp_weight", f"must be >= 0, got {self.nvp_weight}")


@dataclass(kw_only=True)
class TrainSpec:
    """The training run: length, early stopping, workers and the engine."""

    epochs: int = option(10, "Maximum number of epochs (> 0).")
    max_steps_per_epoch: int | None = option(
        None,
        "Most optimizer steps per rank in an epoch (> 0; null = the whole train split). An "
        "epoch then reads at most max_steps_per_epoch x data.batch_size x "
        "train.engine.grad_accum subjects per worker, so an epoch over a huge cohort can be "
        "sized; the train split's blocks come in a fresh random order every epoch (seeded "
        "by `seed`), so bounded epochs see different subjects, and the learning-rate schedule "
        "counts the bounded steps. Validation still reads the whole tuning split.",
    )
    patience: int = option(
        3, "Stop after this many epochs without a better validation score (0 = never)."
    )
    num_workers: int = option(2, "Ray Train workers (>= 1).")
    use_gpu: bool | Literal["auto"] = option(
        False,
        "One GPU per worker: true, false, or auto (true when the Ray cluster has GPUs, decided "
        "on the driver once it is connected and said in one line; the run's config.yaml "
        "records what auto became, and resuming keeps it).",
    )
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (> 0).")
    max_failures: int = option(
        1, "Worker failures tolerated: a dead worker is replaced and training resumes."
    )
    keep_checkpoints: int = option(2, "Checkpoints kept (the best by validation plus the latest).")
    min_free_gb: float = option(
        1.0,
        "Refuse to start (or resume) when the run directory's filesystem has less free space "
        "than this, in GB (0 = no check): checkpoints must not fail half-way for lack of disk.",
    )
    step_log: str | None = option(
        None,
        "JSON-lines file to which every worker appends, after each epoch, one line: "
        '{"epoch", "rank", "seconds", "cpu_seconds", "step_seconds": [...], "step_keys": '
        '[...], "switches": [voluntary, involuntary], "page_faults"} (the epoch\'s wall time, '
        "its training thread's CPU time, the wall time of every step and a 32-bit name of its "
        "batch (CRC-32 of the subject ids), and that thread's context switches "
        "and minor page faults during the epoch, counted on Linux; null = off). "
        "Written on the node where the worker runs; a relative path is taken from where the "
        "job is launched. For finding slow steps (stalls, stragglers) and a loop that waits, "
        "and for `ehrsurv bench throughput`.",
    )
    tracking: Literal["none", "mlflow", "tensorboard"] = option(
        "none",
        "Experiment tracking of the run (docs/training.md#tracking): mlflow logs the resolved "
        "config as parameters, every epoch's metrics, the final metrics.json values and the "
        "plots; tensorboard writes the same numbers (and the plots as images) as event files. "
        "Needs `pip install 'ehrsurv_dist[tracking]'`; none = off.",
    )
    tracking_uri: str | None = option(
        None,
        "Where tracking data goes. mlflow: a tracking URI or a folder (a file store); null = "
        "$MLFLOW_TRACKING_URI if set, else RUN/mlruns (a sweep: OUT/mlruns). tensorboard: the "
        "log folder; null = RUN/tensorboard (a sweep: OUT/tensorboard, one sub-folder per "
        "trial). A relative folder is taken from where the job is launched.",
    )
    tracking_experiment: str | None = option(
        None,
        "MLflow experiment the run (or the sweep, with one nested run per trial) is logged in; "
        "null = the job's `name`. Ignored by tensorboard.",
    )
    engine: EngineConfig = section(EngineConfig, "Optimiser, schedule, precision and backend.")

    @property
    def gpu(self) -> bool:
        """``use_gpu`` once decided: ``auto`` is resolved on the driver after it connects to
        Ray (``train.launch.resolve_use_gpu``) before anything reads this.

        Raises:
            ConfigError: still ``auto``.
        """
        if not isinstance(self.use_gpu, bool):
            raise ConfigError("train.use_gpu", "auto is resolved on the driver first")
        return self.use_gpu

    def gpu_on(self, cluster: Mapping[str, float]) -> bool:
        """``use_gpu`` on ``cluster`` (``ray.cluster_resources()``): ``auto`` = whether the
        cluster has a GPU; true and false as they are."""
        if self.use_gpu == "auto":
            return float(cluster.get("GPU", 0)) > 0
        return bool(self.use_gpu)

    def __post_init__(self) -> None:
        require(
            self.tracking_uri is None or self.tracking_uri.strip() != "",
            "tracking_uri",
            "must be a URI or folder, or null for the default",
        )
        require(
            self.tracking_experiment is None or self.tracking_experiment.strip() != "",
            "tracking_experiment",
            "must be a non-empty name, or null for the job's name",
        )
        require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        require(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch > 0,
            "max_steps_per_epoch",
            f"must be > 0 or null, got {self.max_steps_per_epoch}",
        )
        require(self.patience >= 0, "patience", f"must be >= 0, got {self.patience}")
        require(self.num_workers >= 1, "num_workers", f"must be >= 1, got {self.num_workers}")
        require(
            self.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}"
        )
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(self.min_free_gb >= 0, "min_free_gb", f"must be >= 0, got {self.min_free_gb}")
        require(
            self.keep_checkpoints >= 1,
            "keep_checkpoints",
            f"must be >= 1, got {self.keep_checkpoints}",
        )


@dataclass(kw_only=True)
class EvalSpec:
    """Evaluation over whole splits (docs/design.md §4)."""

    n_boot: int = option(200, "Bootstrap resamples for 95% intervals (0 = none).")
    horizons: list[int] | None = option(
        None, "Whole visit indices k for Brier and td-AUC (null = quartiles of event times)."
    )
    calibration_horizon: int | None = option(
        None, "Horizon k of the calibration plot (null = median event time)."
    )
    horizons_days: list[float] = option(
        [30.0, 90.0, 365.0],
        "Calendar axis: days for Brier score and td-AUC (kept where within task.horizon_days).",
    )
    actors: int | None = option(
        None,
        "Ray Data actors holding the model for batch inference (evaluate, predict); null = "
        "one per GPU with train.use_gpu, else the cluster's CPUs less one (for ingest).",
    )

    def __post_init__(self) -> None:
        require(self.n_boot >= 0, "n_boot", f"must be >= 0, got {self.n_boot}")
        require(
            self.actors is None or self.actors > 0,
            "actors",
            f"must be > 0 or null, got {self.actors}",
        )


@dataclass(kw_only=True)
class PredictionTimesSpec:
    """Rules that make prediction times from the data (instead of a label file)."""

    at_code: str | None = option(
        None,
        "Every distinct time at which this code occurs is a prediction time (e.g. a discharge "
        "code such as ADMIN//DISCHARGE).",
    )
    days_after_first_record: float | None = option(
        None, "One prediction time per subject, this many days after its first timed record."
    )

    def __post_init__(self) -> None:
        require(
            self.at_code is None or self.days_after_first_record is None,
            "at_code",
            "give one rule: at_code or days_after_first_record, not both",
        )
        d = self.days_after_first_record
        require(d is None or d >= 0, "days_after_first_record", f"must be >= 0, got {d}")


@dataclass(kw_only=True)
class BinsSpec:
    """The day bins of the calendar axis: one hazard per bin, closed at the horizon."""

    edges_days: list[float] | None = option(
        None,
        "Bin edges in days: 0 < ... < horizon_days, strictly increasing (0 and the horizon may "
        "be left out; they are added). null: fit `quantiles` bins on the train split.",
    )
    quantiles: int = option(
        8,
        "Without edges_days: this many bins, inner edges at quantiles of the train split's "
        "event times (never the tuning or held-out split); the fitted edges are saved in the run.",
    )

    def __post_init__(self) -> None:
        require(self.quantiles >= 1, "quantiles", f"must be >= 1, got {self.quantiles}")


@dataclass(kw_only=True)
class TaskSection:
    """What is predicted: the seed's visit axis, or a MEDS task on the calendar axis."""

    axis: Literal["visit", "calendar"] = option(
        "visit",
        "visit: survival over visit indices, outcomes from data.outcomes (one row per subject); "
        "calendar: survival in days after each prediction time (label file or rule), outcome "
        "from event codes in the data or from task.outcomes (docs/tasks.md).",
    )
    labels: str | None = option(
        None,
        "Calendar axis: a MEDS label file (subject_id, prediction_time[, value columns]) or a "
        "folder of them; any number of rows per subject. Relative to the cohort when not found "
        "as given.",
    )
    prediction_times: PredictionTimesSpec = section(
        PredictionTimesSpec, "Calendar axis without a label file: a rule for prediction times."
    )
    min_history_days: float = option(
        0.0, "Calendar axis: skip (and count) samples with less history before them (>= 0)."
    )
    event_codes: list[str] = option(
        ["MEDS_DEATH"],
        "Calendar axis: codes whose first occurrence after the prediction time is the event; "
        "PREFIX//* matches a code family. Ignored when task.outcomes is set.",
    )
    outcomes: str | None = option(
        None,
        "Calendar axis: an outcome table (subject_id, event bool, time timestamp[us]; one row per "
        "subject) giving every sample's outcome instead of task.event_codes (then ignored): an "
        "event at or before the prediction time excludes the sample (not at risk), a censoring "
        "before it or a subject without a row too. Relative to the cohort when not found as "
        "given; null: outcomes from event codes.",
    )
    horizon_days: float = option(
        730.0,
        "Calendar axis: follow-up after the prediction time, in days (> 0); samples are "
        "censored here at the latest.",
    )
    bins: BinsSpec = section(BinsSpec, "Calendar axis: the day bins.")

    def __post_init__(self) -> None:
        require(self.horizon_days > 0, "horizon_days", f"must be > 0, got {self.horizon_days}")
        require(
            self.min_history_days >= 0,
            "min_history_days",
            f"must be >= 0, got {self.min_history_days}",
        )
        require(len(self.event_codes) > 0, "event_codes", "needs at least one code")
        require(
            self.outcomes is None or (self.axis == "calendar" and self.outcomes != ""),
            "outcomes",
            "must be a path, and only on the calendar axis (the visit axis reads data.outcomes)",
        )
        if self.axis == "calendar":
            pt = self.prediction_times
            rules = (pt.at_code is not None) + (pt.days_after_first_record is not None)
            require(
                (self.labels is not None) + rules == 1,
                "labels",
                "the calendar axis needs exactly one source of prediction times: task.labels, "
                "task.prediction_times.at_code or task.prediction_times.days_after_first_record",
            )
        if self.bins.edges_days is not None:
            e = [float(x) for x in self.bins.edges_days]
            bad = [x for x in e if x < 0 or x > self.horizon_days]
            require(
                not bad,
                "bins.edges_days",
                f"edges_days must lie in [0, horizon_days={self.horizon_days:g}]; got {bad}",
            )
            require(
                all(b > a for a, b in zip(e, e[1:], strict=False)),
                "bins.edges_days",
                f"edges_days must increase strictly; got {e}",
            )

    def edges(self) -> list[float] | None:
        """The given bin edges with 0 and the horizon added, or None (fit quantiles)."""
        if self.bins.edges_days is None:
            return None
        inner = [float(x) for x in self.bins.edges_days if 0 < float(x) < self.horizon_days]
        return [0.0, *inner, float(self.horizon_days)]


@dataclass(kw_only=True)
class JobSpec(JobConfig):
    """A whole job: data, model, training, and the pretrain / finetune / eval settings."""

    model: ModelSpec = section(ModelSpec, "Model family, size and attention.")
    train: TrainSpec = section(TrainSpec, "Epochs, early stopping, workers and engine.")
    finetune: FinetuneSpec = section(FinetuneSpec, "Survival fine-tuning strategy and loss.")
    pretrain: PretrainSpec = section(PretrainSpec, "Pretraining objective.")
    eval: EvalSpec = section(EvalSpec, "Evaluation settings.")
    task: TaskSection = section(
        TaskSection, "The prediction task: visit axis (default) or a calendar-time MEDS task."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task.axis == "calendar":
            # The ranking and Cox terms take a visit index per subject; on the calendar axis a
            # censoring at the horizon has the index K (every bin survived), which they reject.
            require(
                self.finetune.loss == "nll",
                "finetune.loss",
                f"the calendar axis trains the day-bin likelihood (nll); got {self.finetune.loss!r}",
            )
            require(
                self.data.truncation == "keep_recent",
                "data.truncation",
                "the calendar axis keeps the most recent history before the prediction time: "
                "use keep_recent",
            )
