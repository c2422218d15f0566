"""User-facing errors.

Every error a user can cause with bad input derives from :class:`EhrsurvError`. The CLI prints its
message on one line and exits non-zero without a traceback; anything else is a bug and keeps its
traceback. Configuration errors are :class:`ConfigError` (a ``ValueError`` that names the dotted
key), raised by every config dataclass's ``__post_init__`` through :func:`require`.
"""

from __future__ import annotations

import copy


class EhrsurvError(Exception):
    """Base class of the errors that a user's input causes (bad data, config, paths)."""

    exit_code: int = 2


class CohortError(EhrsurvError):
    """A MEDS cohort or outcome table cannot be used as it is."""


class LabelError(CohortError):
    """A MEDS label file (prediction times of a calendar-axis task) cannot be used as it is."""


class OutputError(EhrsurvError):
    """An output location is unusable (exists with another run, unwritable, ...)."""


class ConfigError(ValueError):
    """A user-facing configuration error, rendered on one line.

    ``str(err)`` reads ``[source: ]key: message``, e.g.
    ``jobs/x.yaml: data.max_seq_len: must be > 0, got 0``.

    Args:
        key: Dotted key of the offending value, relative to the dataclass that raises it
            (``"max_seq_len"`` inside ``DataConfig.__post_init__``); the loader adds the parent
            prefix (``"data.max_seq_len"``). Empty for errors about the file as a whole.
        message: What is wrong, one line.
        source: Where the value came from: a file path, ``path:line:column``, or an override.
    """

    def __init__(self, key: str, message: str, *, source: str | None = None) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message.replace("\n", " ")
        self.source = source
        self.suggestion: str | None = None
        self._unknown = False

    @classmethod
    def unknown_key(cls, key: str, suggestion: str | None = None) -> ConfigError:
        """An error for a key that no dataclass declares, with an optional close match."""
        err = cls(key, "unknown key")
        err._unknown = True
        err.suggestion = suggestion
        return err

    def prefixed(self, prefix: str) -> ConfigError:
        """A copy whose key is ``prefix.key``: lifts a nested dataclass's error to its parent."""
        err = copy.copy(self)
        err.key = join_key(prefix, self.key)
        return err

    def with_source(self, source: str | None) -> ConfigError:
        """A copy that names where the value came from (kept if one is already set)."""
        err = copy.copy(self)
        err.source = self.source or source
        return err

    def __str__(self) -> str:
        if self._unknown:
            body = f"unknown key '{self.key}'"
            if self.suggestion:
                body += f" (did you mean '{self.suggestion}'?)"
        elif self.key:
            body = f"{self.key}: {self.message}"
        else:
            body = self.message
        return f"{self.source}: {body}" if self.source else body


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(key, message)`` unless ``condition`` holds; for ``__post_init__``.

    Raises:
        ConfigError: When ``condition`` is false.
    """
    if not condition:
        raise ConfigError(key, message)


def join_key(prefix: str, key: str) -> str:
    """``prefix.key`` of dotted config keys; either part may be empty."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}.{key}"
