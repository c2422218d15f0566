"""Shared test settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user cache (validation reports of cohorts whose folder is not writable) in a temp
    folder: the suite never writes to the real ``~/.cache/ehrsurv``. Set before any Ray starts,
    so Ray's workers inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EHRSURV_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))
        mp.delenv("EHRSURV_VALIDATION_CACHE", raising=False)
        yield


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two spinning OpenMP
    threads slow the model tests down ~50x."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def make_untrained_run() -> Callable[[str, str, Sequence[Any]], Any]:
    """``make(cohort, out, overrides) -> spec``: a finetune run directory (config.yaml, MODE,
    vocab.json, the export) with untrained weights, for the tests of evaluate/predict that need
    a run but not training."""

    def make(cohort: str, out: str, overrides: Sequence[Any]) -> Any:
        from ehrsurv_dist.config import load_config
        from ehrsurv_dist.data.pipeline import IngestPipeline
        from ehrsurv_dist.jobspec import JobSpec
        from ehrsurv_dist.rundir import EXPORT
        from ehrsurv_dist.train import modeling
        from ehrsurv_dist.train.outdir import prepare_run_dir

        spec = load_config(JobSpec, None, [*overrides, ("data.cohort", cohort)])
        prepare_run_dir(out, spec, "finetune")
        fit = IngestPipeline(cohort, spec.data, seed=spec.seed).fit(
            vocab_path=os.path.join(out, "vocab.json")
        )
        model = modeling.build_model(spec, fit.vocab.size, "finetune")
        cfg = modeling.model_config(spec, fit.vocab.size)
        modeling.save_export(
            os.path.join(out, EXPORT),
            model.state_dict(),
            cfg,
            spec,
            "finetune",
            fit.vocab.hash,
            vocab_path=os.path.join(out, "vocab.json"),
        )
        return spec

    return make


@pytest.fixture
def no_ray_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the code under test reaches Ray's start-up (the launcher's and the
    sweep's ``init_ray``). ``ray.is_initialized()`` cannot say it: in a full run the
    integration tier's session cluster is still up when the unit tests run."""
    import ehrsurv_dist.train.launch as launch
    import ehrsurv_dist.tune.run as tune_run

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started Ray")

    monkeypatch.setattr(launch, "init_ray", refuse)
    monkeypatch.setattr(tune_run, "init_ray", refuse)
