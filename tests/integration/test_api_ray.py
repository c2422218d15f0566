"""The Python API and scoring new cohorts on the session's local Ray: docs/python.md executed as
written (its shell commands through the CLI entry, then its Python blocks), ``load_model(RUN)
.predict`` in a new process against ``ehrsurv predict``'s file (visit axis on a fine-tuned run,
calendar axis on an untrained one), and predict/evaluate of a new cohort through the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ehrsurv_dist
from ehrsurv_dist import schema as S

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"
N_SUBJECTS = 200  # the smoke preset


def _main(*argv: str) -> tuple[int, str]:
    from ehrsurv_dist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


def _blocks(lang: str) -> list[str]:
    """The fenced code blocks of docs/python.md in language ``lang``, in order."""
    text = DOC.read_text(encoding="utf-8")
    return [b for lg, b in re.findall(r"^```(\w+)\n(.*?)^```", text, re.M | re.S) if lg == lang]


@pytest.fixture(scope="module")
def doc_dir(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """A directory where the doc's shell block ran: every line is an ``ehrsurv`` command, run
    through the CLI entry in this process (on the session's Ray)."""
    d = tmp_path_factory.mktemp("doc")
    (block,) = _blocks("bash")
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 3
    cwd = os.getcwd()
    os.chdir(d)
    try:
        for line in lines:
            argv = shlex.split(line)
            assert argv[0] == "ehrsurv", line
            code, text = _main(*argv[1:])
            assert code == 0, f"{line}\n{text}"
    finally:
        os.chdir(cwd)
    return str(d)


def test_the_python_doc_runs_as_written(doc_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(doc_dir)
    blocks = _blocks("python")
    assert len(blocks) == 3
    ns: dict[str, Any] = {"__name__": "__doc__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:python block {i + 1}", "exec"), ns)  # noqa: S102
    preds = ns["preds"]
    assert isinstance(preds, pa.Table) and preds.num_rows == N_SUBJECTS
    assert ns["m"].time_axis == "visit" and ns["m"].num_parameters > 10_000
    png = Path(doc_dir) / "survival_top5.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


# --- load_model(RUN).predict in a new process == `ehrsurv predict`'s file ----------------------

_CHILD = """
import json, sys
import pyarrow.parquet as pq
from ehrsurv_dist import load_model
t = load_model(sys.argv[1]).predict(sys.argv[2])
pq.write_table(t, sys.argv[3])
print(json.dumps({"ray_imported": "ray" in sys.modules,
                  "ray_initialized": bool("ray" in sys.modules and sys.modules["ray"].is_initialized())}))
"""


def _child_env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(ehrsurv_dist.__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _predict_in_new_process(run: str, cohort: str, out: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, run, cohort, out],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return state


def _assert_same_predictions(got: pa.Table, want: pa.Table) -> None:
    """Same schema, rows and order; the floats equal to 1e-6 (Ray Data actors vs this process)."""
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows > 0
    for name in want.column_names:
        a, b = got.column(name), want.column(name)
        if pa.types.is_list(b.type):
            assert [len(x) for x in a.to_pylist()] == [len(x) for x in b.to_pylist()], name
            fa = pa.chunked_array([c.flatten() for c in a.chunks]).to_numpy()
            fb = pa.chunked_array([c.flatten() for c in b.chunks]).to_numpy()
            np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-6, err_msg=name)
        elif pa.types.is_floating(b.type):
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-6, err_msg=name)
        else:
            assert a.to_pylist() == b.to_pylist(), name


def _copy_without_outcomes(src: str, dst: str) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(S.OUTCOMES_FILE))
    assert not os.path.exists(os.path.join(dst, S.OUTCOMES_FILE))
    return dst


def test_api_predict_in_a_new_process_equals_the_cli_file_visit_axis(
    doc_dir: str, tmp_path: Path
) -> None:
    run = os.path.join(doc_dir, "runs", "tiny")
    cohort = _copy_without_outcomes(os.path.join(doc_dir, "new_cohort"), str(tmp_path / "c"))
    cli_out = str(tmp_path / "cli.parquet")
    code, text = _main("predict", run, "--cohort", cohort, "--out", cli_out, "eval.actors=1")
    assert code == 0, text
    api_out = str(tmp_path / "api.parquet")
    state = _predict_in_new_process(run, cohort, api_out)
    assert state == {"ray_imported": False, "ray_initialized": False}
    want = pq.read_table(cli_out)
    assert want.num_rows == N_SUBJECTS and not any(want.column(S.EVENT).to_pylist())
    _assert_same_predictions(pq.read_table(api_out), want)


def test_api_predict_in_a_new_process_equals_the_cli_file_calendar_axis(
    tmp_path: Path, make_untrained_run: Any, ray_local: None
) -> None:
    """An untrained calendar run (fine-tuning one costs a minute of this 2-core machine; the
    weights do not matter to the contract): API in a new process vs ``ehrsurv predict``."""
    from ehrsurv_dist.data.synth_calendar import synthesize_calendar

    own, new = str(tmp_path / "own"), str(tmp_path / "new")
    synthesize_calendar(own, subjects=40, seed=11)
    synthesize_calendar(new, subjects=30, seed=12)
    os.remove(os.path.join(new, S.OUTCOMES_FILE))
    run = str(tmp_path / "run")
    make_untrained_run(
        own,
        run,
        [
            "model.size=tiny",
            "train.min_free_gb=0",
            "task.axis=calendar",
            "task.labels=labels/death.parquet",
            "task.bins.edges_days=[90, 365]",
            "data.max_seq_len=64",
        ],
    )
    cli_out = str(tmp_path / "cli.parquet")
    code, text = _main("predict", run, "--cohort", new, "--out", cli_out, "eval.actors=1")
    assert code == 0, text
    api_out = str(tmp_path / "api.parquet")
    assert _predict_in_new_process(run, new, api_out)["ray_imported"] is False
    want = pq.read_table(cli_out)
    assert want.num_rows == pq.read_table(os.path.join(new, "labels", "death.parquet")).num_rows
    assert want.column_names[:5] == [S.SUBJECT_ID, S.SPLIT, S.PREDICTION_TIME, S.EVENT, "time_days"]
    assert {len(s) for s in want.column("survival").to_pylist()} == {3}
    _assert_same_predictions(pq.read_table(api_out), want)


# --- new cohorts through the CLI on Ray -------------------------------------------------------


def test_cli_predict_new_cohort_of_a_data_outcomes_run(
    tmp_path: Path, make_untrained_run: Any, ray_local: None
) -> None:
    """A run trained with ``data.outcomes=PATH`` (its own cohort's table) predicts a new cohort
    that has no outcome table: the run's table is not read (it used to be, and failed)."""
    from ehrsurv_dist import load_model
    from ehrsurv_dist.data.synthetic import synthesize

    own, new = str(tmp_path / "own"), str(tmp_path / "new")
    synthesize(own, "smoke", seed=3)
    moved = str(tmp_path / "own_outcomes.parquet")
    shutil.move(os.path.join(own, S.OUTCOMES_FILE), moved)
    synthesize(new, "smoke", seed=5)
    os.remove(os.path.join(new, S.OUTCOMES_FILE))
    run = str(tmp_path / "run")
    make_untrained_run(
        own, run, ["model.size=tiny", "train.min_free_gb=0", f"data.outcomes={moved}"]
    )
    out = str(tmp_path / "p.parquet")
    code, text = _main("predict", run, "--cohort", new, "--out", out, "eval.actors=1")
    assert code == 0, text
    assert f"wrote predictions of {N_SUBJECTS} subjects" in text
    got = pq.read_table(out)
    _assert_same_predictions(got, load_model(run).predict(new, use_ray=False))


def test_cli_evaluate_new_cohort_with_outcomes(doc_dir: str, tmp_path: Path) -> None:
    """``ehrsurv evaluate RUN --cohort NEW --outcomes F --out DIR`` on Ray: metrics of all the
    new cohort's subjects in DIR (equal to the in-process path's), nothing in the run."""
    from sksurv.metrics import concordance_index_censored

    from ehrsurv_dist.evaluate import evaluate_run

    run = os.path.join(doc_dir, "runs", "tiny")
    before = {p: os.path.getmtime(os.path.join(run, p)) for p in os.listdir(run)}
    new = _copy_without_outcomes(os.path.join(doc_dir, "new_cohort"), str(tmp_path / "c"))
    outcomes = os.path.join(doc_dir, "new_cohort", S.OUTCOMES_FILE)
    out = str(tmp_path / "ext")
    argv = ["evaluate", run, "--cohort", new, "--outcomes", outcomes, "--out", out]
    code, text = _main(*argv, "eval.n_boot=0", "eval.actors=1")
    assert code == 0, text
    assert f"all       n={N_SUBJECTS:5d}" in text
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    assert m["run"] == os.path.abspath(run) and m["cohort"] == new
    assert set(m) == {"run", "cohort", "all"}
    allm = m["all"]
    pred = pq.read_table(os.path.join(out, "predictions", "predictions.parquet")).to_pandas()
    assert allm["n_subjects"] == len(pred) == N_SUBJECTS
    truth = pq.read_table(outcomes).to_pandas().set_index(S.SUBJECT_ID)
    ev = pred[S.EVENT].to_numpy()
    np.testing.assert_array_equal(ev, truth.loc[pred[S.SUBJECT_ID], "event"].to_numpy())
    time = pred[S.LAST_VISIT].to_numpy() + 0.5 * ev
    want = concordance_index_censored(ev, time, pred["risk"].to_numpy())[0]
    assert allm["c_index_harrell"] == pytest.approx(want, abs=1e-12)
    assert os.path.exists(os.path.join(out, "plots", "km_risk_tertiles_all.png"))
    # the Ray path's metrics equal the in-process path's
    ref = evaluate_run(
        run, None, 0, use_ray=False, cohort=new, outcomes=outcomes, out=str(tmp_path / "ref")
    )["all"]
    for key in ("c_index_td", "c_index_harrell", "c_index_uno", "ibs"):
        assert allm[key] == pytest.approx(ref[key], abs=1e-6), key
    assert {p: os.path.getmtime(os.path.join(run, p)) for p in os.listdir(run)} == before
    # never into the run directory
    code, text = _main(*argv[:-1], run)
    assert code == 2 and "is the run directory" in text
