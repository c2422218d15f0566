"""ZeRO-3 and bf16 on CPU: 2 Ray Train workers, DeepSpeed 0.19 (CPU accelerator, gloo).

The same tiny fine-tuning (seed, data, one epoch of a few steps per rank) under ZeRO-0 fp32,
ZeRO-3 fp32 and ZeRO-3 bf16. ZeRO-3 shards the parameters between the two workers, gathers them
for every layer's forward and backward, reduce-scatters the gradients and exports through a
gather of the full state dict: the same arithmetic as ZeRO-0 up to the order of float sums.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.launch import run_training

pytestmark = pytest.mark.integration

TINY = [
    "model.size=tiny",
    "data.batch_size=16",
    "data.max_seq_len=96",
    "train.num_workers=2",
    "train.epochs=1",
    "train.engine.lr=0.001",
    "finetune.strategy=full",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("zero3") / "cohort")
    synthesize(out, "smoke", seed=3, signal=3.0)
    return out


def _run(cohort: str, out: Path, *more: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    spec = load_config(JobSpec, None, [*TINY, *more, ("data.cohort", cohort)])
    res = run_training(spec, "finetune", str(out))
    (epoch,) = res.history
    return epoch, modeling.load_export(res.export)["state_dict"]


@pytest.fixture(scope="module")
def zero0(
    cohort: str, tmp_path_factory: pytest.TempPathFactory, ray_local: None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The reference: ZeRO-0, fp32."""
    return _run(cohort, tmp_path_factory.mktemp("zero0") / "run", "train.engine.zero_stage=0")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    for k, v in b.items():
        assert a[k].dtype == torch.float32 and a[k].shape == v.shape, k
    return max(float((a[k] - b[k]).abs().max()) for k in b)


# Every parameter partitioned and released at once, prefetching on: after validation's forward
# a parameter is still in flight, and the export's gather failed with DeepSpeed's "Cannot
# partition a param in flight" until consolidated_state_dict released them first (this test
# failed without that line).
EAGER_RELEASE = {
    "zero_optimization": {
        "stage3_param_persistence_threshold": 0,
        "stage3_max_reuse_distance": 0,
        "stage3_max_live_parameters": 1000,
        "stage3_prefetch_bucket_size": 1000,
    }
}


def test_zero3_fp32_matches_zero0(cohort: str, tmp_path: Path, zero0: Any) -> None:
    # Two ranks: ZeRO-3's reduce-scatter adds the same two gradients as ZeRO-0's all-reduce and
    # AdamW updates the same fp32 numbers (in flat partitions): float rounding apart, the same
    # run. Seen: equal losses and td-C, exported weights within 6e-8.
    ref, ref_weights = zero0
    got, weights = _run(
        cohort,
        tmp_path / "run",
        "train.engine.zero_stage=3",
        ("train.engine.deepspeed_config", EAGER_RELEASE),
    )
    assert got["steps"] == ref["steps"] >= 4
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
    assert got["val_c_index_td"] == pytest.approx(ref["val_c_index_td"], abs=1e-6)
    # the export gathered every parameter shard (an ungathered one would be empty)
    assert _max_diff(weights, ref_weights) < 1e-5


def test_zero3_bf16_tracks_zero0_fp32(cohort: str, tmp_path: Path, zero0: Any) -> None:
    # bf16 rounds what the forward pass sees to 8 significant bits (0.4%); seen: train loss
    # 2.9e-5 relative, the same td-C, weights within 3.7e-3. Adam moves a weight by ~lr a step,
    # so after 10 steps at lr 1e-3 any two runs differ by at most ~2e-2: 1e-2 still says that
    # bf16 followed fp32's path.
    ref, ref_weights = zero0
    got, weights = _run(
        cohort, tmp_path / "run", "train.engine.zero_stage=3", "train.engine.precision=bf16"
    )
    assert got["steps"] == ref["steps"]
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
    assert got["train_loss"] != pytest.approx(ref["train_loss"], rel=1e-6)  # bf16 really ran
    assert got["val_c_index_td"] == pytest.approx(ref["val_c_index_td"], abs=1e-2)
    assert _max_diff(weights, ref_weights) < 1e-2
    # the fp32 master weights were exported, not the module's bf16 copies (whose float32
    # images have 16 zero low bits)
    assert any((w.view(torch.int32) & 0xFFFF).any() for w in weights.values())
