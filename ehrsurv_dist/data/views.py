"""Typed views over :class:`~ehrsurv_dist.ragged.Ragged`: named read-only attributes.

The data containers (``SubjectVisits``, ``FlatTokens``, ``VisitTokens``, ``PaddedBlock``) hold
their per-subject labels as arrays and everything ragged as one :class:`Ragged` each. The names
the rest of the package reads (``visit_offsets``, ``codes``, ``code_offsets``, ...) are
:class:`RaggedField` descriptors into those, declared once per name instead of as hand-written
properties.
"""

from __future__ import annotations

from typing import Any, Literal

Part = Literal["values", "offsets", "lengths"]


class RaggedField:
    """Read-only attribute: a part of a :class:`Ragged` held by the instance.

    ``RaggedField("visits", "codes", part="offsets")`` reads
    ``obj.visits.values["codes"].offsets``: start at attribute ``ragged``, step into the
    values column of each key, then take ``part`` (``None``: the column itself).
    """

    def __init__(self, ragged: str, *keys: str, part: Part | None = None) -> None:
        self.ragged = ragged
        self.keys = keys
        self.part = part

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        target = getattr(obj, self.ragged)
        for key in self.keys:
            target = target.values[key]
        return getattr(target, self.part) if self.part else target
