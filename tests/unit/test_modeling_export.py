"""The model export: the folder ``RUN/model/`` (safetensors + JSON, no pickle), the job's
``model.sinusoidal`` under its own name in the model config, an export written before
``BEHRTConfig.use_sinusoidal`` became ``sinusoidal``, older runs' ``model.pt`` read by torch's
weights-only loader, a crafted pickle refused before anything in it runs, and an ``--init``
whose encoder does not fit the job's model refused before Ray starts."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from ehrsurv_dist import rundir
from ehrsurv_dist import schema as S
from ehrsurv_dist.cli import main
from ehrsurv_dist.config import load_config
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models.builders import example_flat_batch
from ehrsurv_dist.models.config import BEHRTConfig
from ehrsurv_dist.train import launch, modeling

VOCAB = 53


def _spec(*extra: str) -> JobSpec:
    return load_config(
        JobSpec, None, ["model.arch=behrt", "model.size=tiny", "model.sinusoidal=true", *extra]
    )


def _logits(model: torch.nn.Module) -> torch.Tensor:
    b = example_flat_batch(VOCAB, batch_size=3, seed=0)
    with torch.no_grad():
        return model(b[S.CODES], b[S.AGES], b[S.VISIT_IDS], b[S.ATTENTION_MASK]).logits


def _vocab(tmp_path: Path) -> str:
    p = tmp_path / "vocab.json"
    p.write_text('{"tokens": ["[PAD]"]}\n')
    return str(p)


def _export(tmp_path: Path, spec: JobSpec | None = None, **kw: object) -> tuple[str, torch.Tensor]:
    """A run directory with a model folder of an untrained tiny BEHRT; (run, its logits)."""
    spec = spec or _spec()
    torch.manual_seed(0)
    model = modeling.build_model(spec, VOCAB, "finetune").eval()
    cfg = modeling.model_config(spec, VOCAB)
    run = tmp_path / "run"
    modeling.save_export(
        str(run / rundir.EXPORT),
        model.state_dict(),
        cfg,
        spec,
        "finetune",
        "hash",
        vocab_path=_vocab(tmp_path),
        **kw,  # type: ignore[arg-type]
    )
    return str(run), _logits(model)


def test_job_sinusoidal_reaches_the_model_config() -> None:
    cfg = modeling.model_config(_spec(), VOCAB)
    assert isinstance(cfg, BEHRTConfig) and cfg.sinusoidal


def test_model_folder_is_safetensors_json_and_the_vocabulary(tmp_path: Path) -> None:
    run, want = _export(tmp_path, epoch=2)
    folder = Path(run) / "model"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "vocab.json"]
    assert (folder / "vocab.json").read_text() == Path(_vocab(tmp_path)).read_text()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == modeling.EXPORT_FORMAT and cfg["mode"] == "finetune"
    assert cfg["model_type"] == "BEHRTConfig" and cfg["model_config"]["sinusoidal"] is True
    assert cfg["job_model"]["size"] == "tiny" and cfg["vocab_hash"] == "hash"
    assert cfg["epoch"] == 2 and cfg["time_axis"] == {"axis": "visit", "unit": "visit"}
    assert cfg["job_task"]["axis"] == "visit"
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert modeling.export_path(run) == str(folder)
    assert modeling.export_vocab_path(run) == str(folder / "vocab.json")
    export = modeling.load_export(str(folder))
    torch.testing.assert_close(_logits(modeling.model_from_export(export)), want)


def test_export_replaces_an_older_folder_whole(tmp_path: Path) -> None:
    run, _ = _export(tmp_path, epoch=1)
    (Path(run) / "model" / "stale.txt").write_text("x")
    _export(tmp_path, epoch=3)
    assert not (Path(run) / "model" / "stale.txt").exists()
    assert json.loads((Path(run) / "model" / "config.json").read_text())["epoch"] == 3
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


def test_lora_adapters_are_saved_unmerged_beside_the_merged_weights(tmp_path: Path) -> None:
    spec = _spec("finetune.strategy=lora")
    model = modeling.prepare_finetune(modeling.build_model(spec, VOCAB, "finetune"), spec)
    full = model.state_dict()
    adapters = {k: v for k, v in full.items() if k.endswith((".lora_A", ".lora_B"))}
    assert adapters
    with torch.no_grad():  # non-zero B: the merged weights then differ from the base
        for k, v in adapters.items():
            v.normal_() if k.endswith(".lora_B") else None
    scaling = spec.finetune.lora_alpha / spec.finetune.lora_rank
    merged = modeling.merge_lora_state(full, scaling)
    run = tmp_path / "run"
    modeling.save_export(
        str(run / rundir.EXPORT),
        merged,
        modeling.model_config(spec, VOCAB),
        spec,
        "finetune",
        "hash",
        vocab_path=_vocab(tmp_path),
        adapters=adapters,
    )
    export = modeling.load_export(modeling.export_path(str(run)))
    assert set(export["adapters"]) == set(adapters)
    for k, v in adapters.items():
        torch.testing.assert_close(export["adapters"][k], v)
    assert export["lora"]["scaling"] == scaling
    assert not any(k.endswith(".lora_A") for k in export["state_dict"])
    modeling.model_from_export(export)  # the merged weights load into the plain model


def test_old_field_name_still_loads(tmp_path: Path) -> None:
    run, want = _export(tmp_path)
    export = modeling.load_export(modeling.export_path(run))
    old_cfg = dict(export["model_config"])
    old_cfg["use_sinusoidal"] = old_cfg.pop("sinusoidal")
    old = {**export, "model_config": old_cfg}
    rebuilt = modeling.model_from_export(old)
    assert rebuilt.encoder.embeddings.position_embedding is None  # fixed sinusoidal positions
    torch.testing.assert_close(_logits(rebuilt), want)
    with pytest.raises(EhrsurvError, match="use_sinusoidal"):
        modeling.model_from_export({**export, "model_config": {**old_cfg, "sinusoidal": True}})


def test_legacy_model_pt_loads_through_the_weights_only_loader(tmp_path: Path) -> None:
    """A run from before the model folder: its plain ``model.pt`` (tensors and plain values)
    still loads, with torch's weights-only unpickler."""
    run, want = _export(tmp_path)
    export = modeling.load_export(modeling.export_path(run))
    old = tmp_path / "old"
    legacy = old / rundir.LEGACY_EXPORT
    legacy.parent.mkdir(parents=True)
    torch.save({k: v for k, v in export.items() if k not in ("job_task", "time_axis")}, legacy)
    assert modeling.export_path(str(old)) == str(legacy)
    torch.testing.assert_close(
        _logits(modeling.model_from_export(modeling.load_export(str(legacy)))), want
    )


class _Evil:
    """Unpickling this writes the marker file (what a malicious ``model.pt`` could do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "pwned"))


def _evil_run(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    run = tmp_path / "evil_run"
    pt = run / rundir.LEGACY_EXPORT
    pt.parent.mkdir(parents=True)
    torch.save({"format": 1, "state_dict": {}, "payload": _Evil(str(marker))}, pt)
    (run / "vocab.json").write_text('{"tokens": []}\n')
    return run, marker


def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    run, marker = _evil_run(tmp_path)
    with pytest.raises(EhrsurvError, match="refusing .*not a plain weights file") as e:
        modeling.load_export(modeling.export_path(str(run)))
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_crafted_pickle_as_init_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, marker = _evil_run(tmp_path)
    spec = _spec(f"finetune.init={run}", f"data.cohort={tmp_path}")
    with pytest.raises(EhrsurvError, match="not unpickled"):
        launch._init_export(spec, "finetune")
    rc = main(
        ["finetune", "--cohort", str(tmp_path / "nocohort"), "--init", str(run),
         "--out", str(tmp_path / "out"), "model.size=tiny"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "refusing" in err and "re-export or retrain" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_config_field_is_named_after_the_job_key() -> None:
    names = {f.name for f in dataclasses.fields(BEHRTConfig)}
    assert "sinusoidal" in names and "use_sinusoidal" not in names


def test_the_crafted_pickle_does_run_code_when_fully_unpickled(tmp_path: Path) -> None:
    """The check of the tests above is real: a full unpickle of the same file writes the marker."""
    run, marker = _evil_run(tmp_path)
    torch.load(run / rundir.LEGACY_EXPORT, weights_only=False)
    assert marker.read_text() == "pwned"


# --------------------------------------------------------------------------------------------
# An --init whose encoder does not fit the job's model: refused before Ray, in one line


def _pretrain_run(tmp_path: Path, *over: str) -> tuple[str, JobSpec]:
    """A pretraining run directory (model folder with a real vocabulary) of ``over``'s model,
    untrained; (run, its spec)."""
    from ehrsurv_dist.data.vocab import Vocabulary

    spec = load_config(JobSpec, None, ["model.arch=behrt", *over])
    vocab = Vocabulary([f"CODE/{i}" for i in range(VOCAB - 3)])
    run = tmp_path / "pre"
    run.mkdir()
    vocab.save(str(run / rundir.VOCAB))
    modeling.save_export(
        str(run / rundir.EXPORT),
        modeling.build_model(spec, vocab.size, "pretrain").state_dict(),
        modeling.model_config(spec, vocab.size),
        spec,
        "pretrain",
        vocab.hash,
        vocab_path=str(run / rundir.VOCAB),
    )
    return str(run), spec


def test_init_of_another_size_is_refused_before_ray_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray_start: None
) -> None:
    run, _ = _pretrain_run(tmp_path, "model.size=medium")
    small = load_config(JobSpec, None, [f"finetune.init={run}"])  # the default size: small
    with pytest.raises(EhrsurvError) as e:
        launch._init_export(small, "finetune")
    msg = str(e.value)
    assert msg.startswith(f"--init {run}: its encoder does not fit this job's model")
    assert "hidden_dim 256 there vs 128 here" in msg and "num_layers 4 there vs 2 here" in msg
    assert "set model.size=medium (this job has small)" in msg and "\n" not in msg
    # the command: one line, nothing made, no Ray started (the cohort is not even looked at)
    out = tmp_path / "out"
    rc = main(
        ["finetune", "--cohort", str(tmp_path / "nocohort"), "--init", run, "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "ehrsurv finetune: error: --init" in err and "model.size=medium" in err
    assert not out.exists()  # and no Ray started: the no_ray_start fixture
    # the same size fits; dropout, attention and the head's settings do not matter
    fits = load_config(
        JobSpec,
        None,
        [
            f"finetune.init={run}",
            "model.size=medium",
            "model.dropout=0.3",
            "model.attention=bidirectional",
            "model.visit_pooling=attention",
        ],
    )
    path, vocab = launch._init_export(fits, "finetune")
    assert path == modeling.export_path(run) and vocab is not None and vocab.size == VOCAB


def test_init_mismatch_names_the_job_key_to_change(tmp_path: Path) -> None:
    run, _ = _pretrain_run(tmp_path, "model.size=tiny", "data.max_seq_len=512")
    exp = modeling.load_export(modeling.export_path(run))

    def why(*over: str) -> str | None:
        return modeling.init_mismatch(exp, load_config(JobSpec, None, list(over)), VOCAB)

    assert why("model.size=tiny") is None
    shorter = why("model.size=tiny", "data.max_seq_len=256")
    assert shorter is not None
    assert "max_position 512 there vs 256 here" in shorter and "set data.max_seq_len=512" in shorter
    sinus = why("model.size=tiny", "model.sinusoidal=true")
    assert sinus is not None and "set model.sinusoidal=false" in sinus
    arch = why("model.arch=hierarchical", "model.size=tiny")
    assert arch == (
        "its model is model.arch=behrt, this job's is model.arch=hierarchical: --init needs a "
        "run of the same architecture"
    )
    assert why("model.size=tiny", "task.axis=calendar", "task.labels=l.parquet") is None  # head


def test_a_sweep_checks_every_trial_against_its_init(tmp_path: Path) -> None:
    from ehrsurv_dist.tune import TuneJobSpec, expand_trials
    from ehrsurv_dist.tune.search_space import job_spec, trial_spec

    run, _ = _pretrain_run(tmp_path, "model.size=tiny")
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        "model: {size: tiny}\n"
        "tune:\n  space:\n"
        "    - {name: same, fixed: {model.size: tiny}}\n"
        "    - {name: bigger, fixed: {model.size: small}}\n"
    )
    spec = load_config(TuneJobSpec, cfg, [("finetune.init", run)])
    specs = [trial_spec(job_spec(spec), t) for t in expand_trials(spec)]
    assert len(launch.check_init(specs[:1])) == 1
    with pytest.raises(EhrsurvError, match=r"set model\.size=tiny \(this job has small\)"):
        launch.check_init(specs)
