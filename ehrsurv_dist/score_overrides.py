"""Which config keys ``ehrsurv predict`` / ``evaluate`` (and ``load_model``) may override.

Scoring a trained run reads the run's resolved ``config.yaml``. A ``KEY=VALUE`` override may
change how the run is scored — where the model runs (``train.use_gpu``, ``ray.*``,
``eval.actors``), the metrics (``eval.*``, the scalar risk ``finetune.risk_*``) and how the
cohort is read and batched (``data.batch_size``, ``data.cache``, ...) — but nothing the trained
model depends on: its architecture, its vocabulary, the shape of its inputs or its task. Those
keys are refused with one line naming the key and why. Pure: no Ray, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from ehrsurv_dist.config import Override, describe
from ehrsurv_dist.errors import ConfigError

# Keys (or whole sections, ending with ".") a scoring command may override.
ALLOWED: tuple[str, ...] = (
    "eval.",
    "ray.",
    "train.use_gpu",
    "finetune.risk_score",
    "finetune.risk_k",
    "finetune.risk_n",
    "data.batch_size",
    "data.window_batches",
    "data.pad_multiple",
    "data.cache",
    "data.worker_cache_mb",
    "data.prefetch_batches",
    "data.drop_bad_subjects",
    "data.split_seed",
)

# Why a key may not be overridden: the first prefix that matches names the reason.
REFUSED: tuple[tuple[str, str], ...] = (
    ("model.", "it changes the trained model's architecture"),
    ("data.cohort", "give the cohort with --cohort"),
    ("data.outcomes", "give the cohort's outcome table with --outcomes"),
    ("data.min_count", "the vocabulary is the run's own (fitted on its train split)"),
    ("data.max_vocab_size", "the vocabulary is the run's own (fitted on its train split)"),
    ("data.", "it changes the model's inputs, which must be read as in training"),
    ("task.labels", "give a label file with --labels"),
    ("task.outcomes", "give the cohort's outcome table with --outcomes"),
    ("task.", "the task (axis, horizon, bins, prediction times) is the run's own"),
    ("finetune.", "it is a training setting; nothing is trained when scoring"),
    ("pretrain.", "it is a training setting; nothing is trained when scoring"),
    ("train.", "it is a training setting; nothing is trained when scoring"),
    ("seed", "the run's seed also fixed its splits and initialisation"),
    ("name", "the run's name is its own"),
)

HELP = (
    "dotted config overrides that change how the run is scored, not the trained model: "
    "eval.* (e.g. eval.actors=2, eval.n_boot=100), ray.*, train.use_gpu (false: score a "
    "GPU-trained run on CPU), finetune.risk_score/risk_k/risk_n, and the data-loading knobs "
    + ", ".join(k for k in ALLOWED if k.startswith("data."))
    + ". Keys of the model, its vocabulary, its inputs (data.max_seq_len, ...) or its task "
    "(task.*, bins) are refused"
)


def _matches(key: str, pattern: str) -> bool:
    if pattern.endswith("."):
        return key == pattern[:-1] or key.startswith(pattern)
    return key == pattern or key.startswith(pattern + ".")


def override_key(item: Override) -> str:
    """The dotted key of a ``KEY=VALUE`` string or a ``(key, value)`` pair."""
    if isinstance(item, tuple):
        return str(item[0]).strip()
    return item.partition("=")[0].strip()


def refusal(key: str) -> str | None:
    """Why ``key`` may not be overridden when scoring a trained run; None when it may."""
    if any(_matches(key, p) for p in ALLOWED):
        return None
    if any(p.startswith(key + ".") for p in ALLOWED):
        return "the section holds keys the trained model depends on: override its keys one by one"
    for prefix, why in REFUSED:
        if _matches(key, prefix):
            return why
    return "it is not a scoring setting"


def _known(key: str) -> bool:
    """True when ``key`` names a job option or section (unknown keys are left to the loader,
    which names them with a suggestion)."""
    keys = [k for k, *_ in describe(_jobspec())]
    return key in keys or any(k.startswith(key + ".") for k in keys)


def _jobspec() -> type:
    from ehrsurv_dist.jobspec import JobSpec  # the job's dataclasses (models' config types)

    return JobSpec


def check_scoring_overrides(overrides: Sequence[Override]) -> None:
    """Raise :class:`ConfigError` naming the first override whose key a scoring command
    refuses (see the module doc); keys that are allowed or unknown pass (the loader reports
    an unknown key, with a suggestion, when the overrides are applied)."""
    for item in overrides:
        key = override_key(item)
        if not key or not _known(key):
            continue
        why = refusal(key)
        if why is not None:
            raise ConfigError(key, f"cannot be overridden when scoring a trained run: {why}")
