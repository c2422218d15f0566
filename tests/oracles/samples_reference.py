"""Reference oracle for calendar-axis samples: the obvious loop, one sample at a time.

``ehrsurv_dist.data.samples.make_samples`` is the product implementation (vectorised over a
unit). This module states the same rules (the calendar-axis contract, docs/design.md) with plain
Python loops over subjects and samples, and a randomised test keeps the two equal:

- prediction times: the label rows, or every distinct time of ``at_code``, or the first timed
  record other than ``MEDS_BIRTH`` plus ``days_after_first_record`` days;
- exclusions, the first that applies wins: no birth, before birth, after the last record, an
  event code at or before the prediction time, short history, no input visit;
- outcome: the first event-code record strictly after the prediction time, else censoring at the
  last timed record, always censoring at the horizon;
- outcome from a table (``task.outcomes``; event codes ignored): the subject's first row, a row
  with a null time counting as none; no row, an event at or before the prediction time and a
  censoring before it exclude the sample (in that order, where the event-code check stands);
  else the days to the row's time, capped at the horizon, an event when it is one within the
  horizon;
- input: the rows with ``time <= prediction_time`` in their order of appearance, grouped into
  visits by the visit key (time // granularity), a visit's time being the time of its first row
  in order of appearance; ``MEDS_BIRTH``/``MEDS_DEATH`` and static rows are no tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_DAY, US_PER_YEAR
from ehrsurv_dist.data.samples import (
    REJECT_AFTER_LAST,
    REJECT_BEFORE_BIRTH,
    REJECT_CENSORED_BEFORE,
    REJECT_NO_BIRTH,
    REJECT_NO_INPUT,
    REJECT_NO_OUTCOME_ROW,
    REJECT_NOT_AT_RISK,
    REJECT_SHORT_HISTORY,
    TaskSpec,
)
from ehrsurv_dist.data.visits import GRANULARITY_US

Row = tuple[int, int | None, str | None]  # (subject, time µs or None, code)
OutcomeRow = tuple[int, bool, int | None]  # (subject, event, time µs or None)


def matches(code: str | None, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether ``code`` is one of ``patterns`` or starts with the prefix of a ``PREFIX//*``."""
    if code is None:
        return False
    for p in patterns:
        if p.endswith("//*"):
            if code.startswith(p[:-1]):
                return True
        elif code == p:
            return True
    return False


def samples_reference(
    rows: Sequence[Row],
    task: TaskSpec,
    labels: list[tuple[int, int]] | None,
    granularity: str = "day",
    outcomes: Sequence[OutcomeRow] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int, int, str]]]:
    """Kept samples and rejects of ``rows`` (all rows of some subjects, in file order).

    Args:
        rows: (subject_id, time µs or None for a static row, code).
        task: the task.
        labels: (subject_id, prediction time µs) rows when ``task.labels`` is set.
        granularity: visit granularity.
        outcomes: the outcome table's rows in file order when ``task.outcomes`` is set.

    Returns:
        ``(kept, rejects)``: kept samples sorted by (subject, prediction time), each a dict with
        ``subject_id``, ``prediction_time``, ``event``, ``time_days``, ``prediction_age``,
        ``last_visit`` and ``visits`` (list of ``{"time", "age", "codes"}``); rejects as
        (subject_id, prediction time, reason), sorted.
    """
    g = GRANULARITY_US[granularity]
    by_subject: dict[int, list[tuple[int | None, str | None]]] = {}
    for sid, t, code in rows:
        by_subject.setdefault(sid, []).append((t, code))

    first_row: dict[int, tuple[bool, int | None]] = {}
    if task.outcomes is not None:
        assert outcomes is not None
        for sid, ev, t in outcomes:
            first_row.setdefault(sid, (ev, t))

    samples: list[tuple[int, int]] = []
    for sid in sorted(by_subject):
        recs = by_subject[sid]
        if task.labels is not None:
            assert labels is not None
            samples += sorted((s, p) for s, p in labels if s == sid)
        elif task.at_code is not None:
            times = {t for t, c in recs if t is not None and matches(c, [task.at_code])}
            samples += [(sid, t) for t in sorted(times)]
        else:
            assert task.days_after_first_record is not None
            firsts = [t for t, c in recs if t is not None and c != S.BIRTH_CODE]
            if firsts:
                off = int(round(task.days_after_first_record * US_PER_DAY))
                samples.append((sid, min(firsts) + off))

    kept: list[dict[str, Any]] = []
    rejects: list[tuple[int, int, str]] = []
    for sid, pt in samples:
        recs = by_subject[sid]
        timed = [(t, c) for t, c in recs if t is not None]
        births = [t for t, c in timed if c == S.BIRTH_CODE]
        firsts = [t for t, c in timed if c != S.BIRTH_CODE]
        events = [t for t, c in timed if matches(c, task.event_codes)]
        last = max(t for t, _ in timed) if timed else None
        if not births:
            rejects.append((sid, pt, REJECT_NO_BIRTH))
            continue
        birth = min(births)
        if pt < birth:
            rejects.append((sid, pt, REJECT_BEFORE_BIRTH))
            continue
        assert last is not None
        if pt > last:
            rejects.append((sid, pt, REJECT_AFTER_LAST))
            continue
        row = first_row.get(sid)
        if task.outcomes is not None:
            if row is None or row[1] is None:
                rejects.append((sid, pt, REJECT_NO_OUTCOME_ROW))
                continue
            if row[0] and row[1] <= pt:
                rejects.append((sid, pt, REJECT_NOT_AT_RISK))
                continue
            if not row[0] and row[1] < pt:
                rejects.append((sid, pt, REJECT_CENSORED_BEFORE))
                continue
        elif any(t <= pt for t in events):
            rejects.append((sid, pt, REJECT_NOT_AT_RISK))
            continue
        if task.min_history_days > 0 and (
            not firsts or (pt - min(firsts)) < task.min_history_days * US_PER_DAY
        ):
            rejects.append((sid, pt, REJECT_SHORT_HISTORY))
            continue
        # The as-of cut, then visits in order of key, codes in order of appearance.
        visits: dict[int, list[tuple[int, str | None]]] = {}
        for t, c in timed:
            if t <= pt and c not in S.NON_INPUT_CODES:
                visits.setdefault(t // g, []).append((t, c))
        if not visits:
            rejects.append((sid, pt, REJECT_NO_INPUT))
            continue
        vis = [
            {
                "time": visits[k][0][0],
                "age": float(np.float32((visits[k][0][0] - birth) / US_PER_YEAR)),
                "codes": [c for _, c in visits[k]],
            }
            for k in sorted(visits)
        ]
        if row is not None and task.outcomes is not None:
            assert row[1] is not None
            is_event, end = row[0], row[1]
        else:
            after = [t for t in events if t > pt]
            is_event, end = bool(after), (min(after) if after else last)
        dt_days = (end - pt) / US_PER_DAY
        kept.append(
            {
                "subject_id": sid,
                "prediction_time": pt,
                "event": is_event and dt_days <= task.horizon_days,
                "time_days": min(dt_days, task.horizon_days),
                "prediction_age": float(np.float32((pt - birth) / US_PER_YEAR)),
                "last_visit": len(vis) - 1,
                "visits": vis,
            }
        )
    return kept, sorted(rejects)
