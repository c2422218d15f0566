"""User-facing errors.

Every error a user can cause with bad input derives from :class:`EhrsurvError`. The CLI prints its
message on one line and exits non-zero without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class EhrsurvError(Exception):
    """Base class of the errors that a user's input causes (bad data, config, paths)."""

    exit_code: int = 2


class CohortError(EhrsurvError):
    """A MEDS cohort or outcome table cannot be used as it is."""


class OutputError(EhrsurvError):
    """An output location is unusable (exists with another run, unwritable, ...)."""
