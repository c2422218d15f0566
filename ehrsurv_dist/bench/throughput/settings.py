"""What every training run of ``bench throughput`` shares: its settings and job spec."""

from __future__ import annotations

import dataclasses
from typing import Any

from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import modeling


@dataclasses.dataclass
class TrainSettings:
    """What every training run of the bench shares (the job overrides they all get)."""

    cohort: str
    size: str = "small"
    batch_size: int = 32
    max_seq_len: int = 128
    epochs: int = 3
    lr: float = 1e-3
    seed: int = 0
    cpus_per_worker: int = 1

    def overrides(self, workers: int, zero_stage: int) -> list[Any]:
        return [
            f"model.size={self.size}",
            f"data.batch_size={self.batch_size}",
            f"data.max_seq_len={self.max_seq_len}",
            f"train.num_workers={workers}",
            f"train.cpus_per_worker={self.cpus_per_worker}",
            f"train.epochs={self.epochs}",
            "train.patience=0",  # never stop early: every run trains every epoch
            "train.keep_checkpoints=1",
            "train.engine.engine=deepspeed",
            f"train.engine.zero_stage={zero_stage}",
            f"train.engine.lr={self.lr}",
            "finetune.strategy=full",  # from scratch: everything trains
            "eval.n_boot=0",
            f"seed={self.seed}",
            ("data.cohort", self.cohort),
        ]


def job_spec(
    settings: TrainSettings, workers: int, zero_stage: int, step_log: str | None = None
) -> JobSpec:
    """The fine-tuning job of one run (``train.step_log`` set when ``step_log`` is)."""
    extra = [("train.step_log", step_log)] if step_log else []
    return load_config(JobSpec, None, settings.overrides(workers, zero_stage) + extra)


def trainable_parameters(settings: TrainSettings, vocab_path: str) -> int:
    """Trainable parameters of the runs' model (for the analytic ZeRO state per rank)."""
    spec = job_spec(settings, 1, 0)
    model = modeling.build_model(spec, Vocabulary.load(vocab_path).size, "finetune")
    modeling.prepare_finetune(model, spec)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
