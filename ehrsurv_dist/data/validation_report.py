"""What the MEDS validator reports: one :class:`Problem` per kind, gathered in a :class:`CohortReport`.

Errors are either *fatal* (a file or column is unusable: nothing can be trusted) or
*subject-level* (those subjects can be dropped and written to a rejects file on request).
Warnings never fail validation. A problem names its file, column and a few example subject ids,
never codes, dates or ages of a subject.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ehrsurv_dist.errors import CohortError

MAX_EXAMPLES = 5  # error messages name at most this many subject ids

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    """One kind of problem found in the cohort, aggregated over rows and subjects."""

    severity: Severity
    check: str
    message: str
    file: str | None = None
    column: str | None = None
    count: int = 0
    subjects: list[int] = field(default_factory=list)
    fatal: bool = False  # True: cannot be fixed by dropping subjects

    def line(self) -> str:
        where = ", ".join(
            p for p in (f"file {self.file}" if self.file else "", _col(self.column)) if p
        )
        ex = f"; e.g. subject_id {', '.join(map(str, self.subjects))}" if self.subjects else ""
        n = f" ({self.count})" if self.count else ""
        return (
            f"{self.severity.upper()} [{self.check}]{n} {self.message}"
            + (f" — {where}" if where else "")
            + ex
        )


def _col(c: str | None) -> str:
    return f"column '{c}'" if c else ""


@dataclass
class CohortReport:
    """The result of :func:`validate_cohort`; also what ``ehrsurv validate`` prints."""

    cohort: str
    outcomes: str | None
    files: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_static_rows: int = 0
    n_subjects: int = 0
    n_codes: int = 0
    n_outcome_rows: int = 0
    n_events: int = 0
    problems: list[Problem] = field(default_factory=list)
    # subject id -> reason, for subject-level errors (what a drop would reject)
    bad_subjects: dict[int, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.errors)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, problem: Problem, bad: Iterable[int] = (), reason: str | None = None) -> None:
        self.problems.append(problem)
        for s in bad:
            self.bad_subjects.setdefault(int(s), reason or problem.check)

    def add_subjects(
        self,
        severity: Severity,
        check: str,
        message: str,
        subjects: np.ndarray,
        file: str | None = None,
        column: str | None = None,
        count: int | None = None,
    ) -> None:
        """Report a problem of ``subjects`` (unique ids) unless there are none.

        The problem counts them (or ``count``, e.g. rows) and names the first
        :data:`MAX_EXAMPLES`; an error also marks them as what a drop would reject.
        """
        if not len(subjects):
            return
        problem = Problem(
            severity,
            check,
            message,
            file,
            column,
            count=len(subjects) if count is None else count,
            subjects=subjects[:MAX_EXAMPLES].tolist(),
        )
        self.add(problem, subjects if severity == "error" else ())

    def add_fatal(
        self, check: str, message: str, file: str | None, column: str | None = None
    ) -> None:
        """Report an error that no drop of subjects can fix (a file or column is unusable)."""
        self.add(Problem("error", check, message, file, column, fatal=True))

    def format(self) -> str:
        lines = [
            f"MEDS cohort {self.cohort}",
            f"  files {len(self.files)}  rows {self.n_rows:,}  static rows {self.n_static_rows:,}"
            f"  subjects {self.n_subjects:,}  distinct codes {self.n_codes:,}",
            f"  outcomes {self.outcomes or '(none)'}: rows {self.n_outcome_rows:,}"
            f"  events {self.n_events:,}",
        ]
        if not self.problems:
            lines.append("  no problems found")
        for p in self.problems:
            lines.append("  " + p.line())
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
            + (
                f"; {len(self.bad_subjects):,} subject(s) could be dropped with "
                "data.drop_bad_subjects=true"
                if self.errors and not self.fatal
                else ""
            )
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("bad_subjects")
        d["n_bad_subjects"] = len(self.bad_subjects)
        d["ok"] = self.ok
        return d

    def raise_if_unusable(self, drop_bad_subjects: bool) -> None:
        """Raise :class:`CohortError` unless the cohort is usable (after drops, if allowed)."""
        if self.ok:
            return
        first = self.errors[0].line()
        more = (
            f" (+{len(self.errors) - 1} more; run `ehrsurv validate`)"
            if len(self.errors) > 1
            else ""
        )
        if self.fatal:
            raise CohortError(f"cohort {self.cohort} is unusable: {first}{more}")
        if not drop_bad_subjects:
            raise CohortError(
                f"cohort {self.cohort} has errors in {len(self.bad_subjects):,} subject(s): "
                f"{first}{more}. Fix the data or pass data.drop_bad_subjects=true to drop them "
                "(they are written to the rejects file)."
            )


def report_to_record(rep: CohortReport) -> dict[str, Any]:
    """Everything of ``rep`` as JSON-able data (:func:`report_from_record` gives it back
    equal, field for field; the subjects to drop keep their order)."""
    d = asdict(rep)
    d["bad_subjects"] = [[int(s), r] for s, r in rep.bad_subjects.items()]
    return d


def report_from_record(d: dict[str, Any]) -> CohortReport:
    """The report :func:`report_to_record` recorded.

    Raises:
        KeyError, TypeError, ValueError: not such a record.
    """
    problems = [
        Problem(
            severity=_severity(p["severity"]),
            check=str(p["check"]),
            message=str(p["message"]),
            file=None if p["file"] is None else str(p["file"]),
            column=None if p["column"] is None else str(p["column"]),
            count=int(p["count"]),
            subjects=[int(s) for s in p["subjects"]],
            fatal=bool(p["fatal"]),
        )
        for p in d["problems"]
    ]
    return CohortReport(
        cohort=str(d["cohort"]),
        outcomes=None if d["outcomes"] is None else str(d["outcomes"]),
        files=[str(f) for f in d["files"]],
        n_rows=int(d["n_rows"]),
        n_static_rows=int(d["n_static_rows"]),
        n_subjects=int(d["n_subjects"]),
        n_codes=int(d["n_codes"]),
        n_outcome_rows=int(d["n_outcome_rows"]),
        n_events=int(d["n_events"]),
        problems=problems,
        bad_subjects={int(s): str(r) for s, r in d["bad_subjects"]},
    )


def _severity(s: Any) -> Severity:
    if s == "error":
        return "error"
    if s == "warning":
        return "warning"
    raise ValueError(f"unknown severity {s!r}")
