"""The model export: the job's ``model.sinusoidal`` reaches the model config under its own name,
and an export written before ``BEHRTConfig.use_sinusoidal`` became ``sinusoidal`` still loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import load_config
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models.builders import example_flat_batch
from ehrsurv_dist.models.config import BEHRTConfig
from ehrsurv_dist.train import modeling

VOCAB = 53


def _spec() -> JobSpec:
    return load_config(
        JobSpec, None, ["model.arch=behrt", "model.size=tiny", "model.sinusoidal=true"]
    )


def _logits(model: torch.nn.Module) -> torch.Tensor:
    b = example_flat_batch(VOCAB, batch_size=3, seed=0)
    with torch.no_grad():
        return model(b[S.CODES], b[S.AGES], b[S.VISIT_IDS], b[S.ATTENTION_MASK]).logits


def test_job_sinusoidal_reaches_the_model_config() -> None:
    cfg = modeling.model_config(_spec(), VOCAB)
    assert isinstance(cfg, BEHRTConfig) and cfg.sinusoidal


def test_export_round_trip_and_old_field_name(tmp_path: Path) -> None:
    spec = _spec()
    torch.manual_seed(0)
    model = modeling.build_model(spec, VOCAB, "finetune").eval()
    cfg = modeling.model_config(spec, VOCAB)
    path = str(tmp_path / "model.pt")
    modeling.save_export(path, model.state_dict(), cfg, spec, "finetune", "hash")
    export = modeling.load_export(path)
    assert export["model_config"]["sinusoidal"] is True
    want = _logits(model)
    torch.testing.assert_close(_logits(modeling.model_from_export(export)), want)
    # an export written before the rename: ``use_sinusoidal`` in its model config
    old_cfg = dict(export["model_config"])
    old_cfg["use_sinusoidal"] = old_cfg.pop("sinusoidal")
    old = {**export, "model_config": old_cfg}
    rebuilt = modeling.model_from_export(old)
    assert rebuilt.encoder.embeddings.position_embedding is None  # fixed sinusoidal positions
    torch.testing.assert_close(_logits(rebuilt), want)
    with pytest.raises(EhrsurvError, match="use_sinusoidal"):
        modeling.model_from_export({**export, "model_config": {**old_cfg, "sinusoidal": True}})


def test_config_field_is_named_after_the_job_key() -> None:
    names = {f.name for f in dataclasses.fields(BEHRTConfig)}
    assert "sinusoidal" in names and "use_sinusoidal" not in names
