"""Security and privacy: authentication stays on, no secrets in job specs, no patient data in logs.

- Ray token authentication (on by default since Ray 2.59) is never switched off by a documented
  command, script, job spec, cluster file or test.
- Job specs and cluster files carry no secret values (tokens, passwords, keys).
- INFO-level logs of validation and ingest carry counts only: never a subject's codes, dates,
  ages or ids.
- Error messages name at most a few subject ids, however many subjects are bad.
- ``predict`` output carries no input codes (its Parquet columns are the docs/design.md §5 contract).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.meds import MAX_EXAMPLES, validate_cohort
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import SECRET_SUBJECT0 as SID0
from ehrsurv_dist.testing import distinctive_cohort, write_cohort

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

# --------------------------------------------------------------------------------------------
# Authentication stays on

# Spelled in pieces so that this file does not match its own patterns.
_DISABLED = "dis" + "abled"
AUTH_OFF = [
    re.compile(r"RAY_AUTH_MODE\s*[:=]\s*[\"']?" + _DISABLED, re.I),
    re.compile(r"[\"']RAY_AUTH_MODE[\"']\]?\s*[:=,]\s*[\"']" + _DISABLED, re.I),
    re.compile(r"auth_mode\s*[:=]\s*[\"']?" + _DISABLED, re.I),
    re.compile(r"--disable-" + "auth", re.I),
    re.compile(r"--no-" + "auth", re.I),
    re.compile(r"RAY_enable_" + r"auth\w*\s*[:=]\s*[\"']?(0|false)", re.I),
]
SCANNED_DIRS = ["docs", "jobs", "cluster", "scripts", "tests", "ehrsurv_dist"]
SCANNED_FILES = ["README.md", "Makefile", "pyproject.toml"]
TEXT_SUFFIXES = {".md", ".yaml", ".yml", ".sh", ".py", ".toml", ".txt", ".cfg", ".json", ""}


def _project_text_files() -> list[Path]:
    out = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts:
                out.append(p)
    return out


def _auth_off(text: str) -> list[str]:
    return [m.group(0) for pat in AUTH_OFF for m in pat.finditer(text)]


def test_auth_scanner_catches_the_usual_ways_to_switch_it_off() -> None:
    for bad in (
        "RAY_AUTH_MODE=" + _DISABLED + " ray start --head",
        "export RAY_AUTH_MODE='" + _DISABLED + "'",
        "env:\n  RAY_AUTH_MODE: " + _DISABLED,
        'os.environ["RAY_AUTH_MODE"] = "' + _DISABLED + '"',
        'runtime_env={"env_vars": {"RAY_AUTH_MODE": "' + _DISABLED + '"}}',
        "ray start --head --disable-" + "auth",
    ):
        assert _auth_off(bad), bad
    assert not _auth_off("RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265")


def test_token_authentication_stays_on_everywhere() -> None:
    files = _project_text_files()
    assert len(files) > 20 and any(p.parts[-2] == "jobs" for p in files)
    hits = {
        str(p.relative_to(ROOT)): found
        for p in files
        if p != THIS and (found := _auth_off(p.read_text(encoding="utf-8", errors="replace")))
    }
    assert hits == {}


def test_documented_job_submission_passes_the_token() -> None:
    """Every file that documents a ``ray job submit --address ...`` command also sets the client
    up to send the token (``RAY_AUTH_MODE=token`` or ``RAY_AUTH_TOKEN[_PATH]``)."""
    submit = re.compile(r"ray job submit\b.*--address")
    documented = 0
    for p in _project_text_files():
        if p == THIS or p.suffix not in {".md", ".yaml", ".yml", ".sh", ".py", ""}:
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        if submit.search(text):
            documented += 1
            assert "RAY_AUTH_MODE=token" in text or "RAY_AUTH_TOKEN" in text, p
    assert documented >= 1  # the check ran on something


# --------------------------------------------------------------------------------------------
# No secrets in job specs and cluster files

SECRET_PATTERNS = [
    # key: value / key=value with a secret-sounding key and a literal value
    re.compile(
        r"(?i)\b[\w.-]*(token|passw(or)?d|passwd|secret|api[_-]?key|access[_-]?key|private[_-]?key"
        r"|credentials?)[\w.-]*\s*[:=]\s*[\"']?(?P<value>[^\s\"'#]{6,})"
    ),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(ghp|gho|ghs|github_pat|xox[abp]|sk-[A-Za-z0-9]{8})[A-Za-z0-9_-]{10,}"),
]
# Values that name where a secret comes from rather than being one.
PLACEHOLDER = re.compile(
    r"^(\$\{?\w+\}?|\$\(.*|<[^>]+>|null|none|true|false|[~./][\w./-]*|RAY_AUTH_\w+|\*+|x+)$",
    re.I,
)


def _secrets(text: str) -> list[str]:
    found = []
    for pat in SECRET_PATTERNS:
        for m in pat.finditer(text):
            value = m.groupdict().get("value")
            if value is not None and PLACEHOLDER.match(value):
                continue
            found.append(m.group(0))
    return found


def test_secret_scanner_catches_secrets_and_passes_references() -> None:
    for bad in (
        "env_vars:\n  RAY_AUTH_TOKEN: 3f9c2a7b81d04e55a1c9",
        "password: hunter22hunter",
        'api_key = "sk-abcdefgh1234567890"',
        "aws_access_key_id=AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN RSA PRIVATE KEY-----",
        "token: ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
    ):
        assert _secrets(bad), bad
    for ok in (
        "RAY_AUTH_TOKEN: ${RAY_AUTH_TOKEN}",
        "RAY_AUTH_TOKEN_PATH: ~/.ray/auth_token",
        "token: <your token>",
        "export RAY_AUTH_TOKEN=$(kubectl get secret ehrsurv -o jsonpath='{.data.auth_token}')",
        "# reads the token from ~/.ray/auth_token",
    ):
        assert not _secrets(ok), ok


def test_job_specs_and_cluster_files_carry_no_secrets() -> None:
    files = [
        p
        for d in ("jobs", "cluster", "scripts")
        for p in sorted((ROOT / d).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(p.suffix == ".yaml" for p in files)
    hits = {
        str(p.relative_to(ROOT)): found
        for p in files
        if (found := _secrets(p.read_text(encoding="utf-8", errors="replace")))
    }
    assert hits == {}


# --------------------------------------------------------------------------------------------
# Patient data never reaches the INFO logs


def test_info_logs_carry_counts_not_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from ehrsurv_dist.cli import main
    from ehrsurv_dist.data.cohort import load_cohort
    from ehrsurv_dist.data.pipeline import IngestPipeline

    cohort, secrets = distinctive_cohort(tmp_path / "c")
    caplog.set_level(logging.INFO)  # every logger, INFO and above
    assert main(["validate", cohort]) == 0
    report = capsys.readouterr().out
    load_cohort(cohort)
    pipe = IngestPipeline(cohort, seed=1)
    fit = pipe.fit(vocab_path=str(tmp_path / "vocab.json"))
    n = sum(len(b[S.SUBJECT]) for split in S.SPLITS for b in pipe.iter_batches(split))
    assert n == 12 and fit.vocab.size == 3 + 3  # it did read and encode every subject
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged  # there are INFO logs to check (the ingest plan at least)
    leaked = [s for s in secrets if s in logged or s in report]
    assert leaked == []


def test_errors_name_at_most_a_few_subjects(tmp_path: Path) -> None:
    """100 subjects without a birth: the error and the report name at most MAX_EXAMPLES ids."""
    rows = []
    for i in range(100):
        s = SID0 + i
        rows += [(s, "2020-01-01", "A"), (s, "2020-02-01", "B")]
    cohort = write_cohort(
        tmp_path / "c", rows, [(SID0 + i, False, "2020-06-01") for i in range(100)]
    )
    rep = validate_cohort(cohort)
    ids = re.compile(r"9876543210\d\d")
    with pytest.raises(CohortError) as e:
        rep.raise_if_unusable(drop_bad_subjects=False)
    msg = str(e.value)
    assert "100 subject(s)" in msg and "\n" not in msg
    assert 1 <= len(ids.findall(msg)) <= MAX_EXAMPLES <= 5
    report = rep.format()
    for line in report.splitlines():
        assert len(ids.findall(line)) <= MAX_EXAMPLES, line
    assert len(ids.findall(report)) <= 2 * MAX_EXAMPLES  # no_birth (+ outcome) lines only


# --------------------------------------------------------------------------------------------
# Predictions carry no input codes

PREDICTION_COLUMNS = {
    S.SUBJECT_ID: pa.int64(),
    S.SPLIT: pa.string(),
    S.EVENT: pa.bool_(),
    S.LAST_VISIT: pa.int32(),
    "risk": pa.float64(),
    "hazard": pa.list_(pa.float32()),
    "survival": pa.list_(pa.float32()),
}


def test_predict_output_carries_no_input_codes(tmp_path: Path, make_untrained_run: Any) -> None:
    """``predict`` (single-process path) on a cohort of distinctive codes: the file holds the
    contract's columns only, and none of the cohort's codes or dates appear in it."""
    from ehrsurv_dist.evaluate import predict_cohort

    cohort, secrets = distinctive_cohort(tmp_path / "c")
    run = str(tmp_path / "run")
    make_untrained_run(cohort, run, ["model.size=tiny", "train.min_free_gb=0"])
    out = tmp_path / "pred.parquet"
    assert predict_cohort(run, cohort, str(out), use_ray=False).subjects == 12
    t = pq.read_table(out)
    assert dict(zip(t.schema.names, t.schema.types, strict=True)) == PREDICTION_COLUMNS
    blob = out.read_bytes()
    assert [s for s in secrets[:3] if s.encode() in blob] == []  # the codes
    strings = {v for v in t.column(S.SPLIT).to_pylist()}
    assert strings == {"all"}
