"""Always-on batch checks (docs/data.md) and the padding discipline of docs/data.md.

Pure numpy. The pipeline runs them on the first batches of every run (and a caller may run them
on every batch); a failure raises :class:`BatchCheckError` naming the check, because every
padding bug is silent otherwise: no crash, only corrupted gradients.

Flat checks (``check_flat_batch``):

- ``fields``: every field of ``schema.FLAT_FIELDS`` is present (a batch without
  ``attention_mask`` invites seed bug 1: attending to pads) and has its dtype;
- ``shapes``: ``codes``, ``ages``, ``visit_ids``, ``attention_mask`` (and ``mlm_labels``) share
  one [B, L] shape; label fields are [B];
- ``token_counts``: ``attention_mask.sum(1)`` equals the expected token count of each subject;
- ``right_padding``: real tokens form a prefix of each row;
- ``pad_values``: on padding, ``codes == PAD_ID``, ``visit_ids == 0`` (seed bug 2), ``ages == 0``,
  ``mlm_labels == IGNORE_INDEX`` (no loss on padding);
- ``real_codes``: no real token carries ``PAD_ID`` (a mask derived from ``visit_ids == 0`` or
  from anything but the collate's lengths shows up here or in ``token_counts``);
- ``visit_ids``: over real positions, visit ids start at 0, are non-decreasing with steps of 0
  or 1 (every visit 0..T has a token), and end at ``last_visit``; ``num_visits == last_visit+1``.

Hierarchical checks (``check_hierarchical_batch``): shapes, ``code_mask`` ⊆ ``visit_mask``
per slot, real visits form a prefix, real codes form a prefix of each visit, pad values,
``visit_mask.sum(1) == num_visits`` and the expected counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import EhrsurvError

Batch = Mapping[str, np.ndarray]


class BatchCheckError(EhrsurvError):
    """A batch violates the tensor contract; ``check`` names the failed check."""

    exit_code = 3

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"batch check '{check}' failed: {message}")
        self.check = check


def _fail(check: str, message: str) -> None:
    raise BatchCheckError(check, message)


def _first_bad_rows(bad_rows: np.ndarray | np.bool_, batch: Batch) -> str:
    bad_rows = np.atleast_1d(np.asarray(bad_rows))
    rows = np.flatnonzero(bad_rows)[:5]
    sid = batch.get(S.SUBJECT)
    if sid is not None and len(sid) == len(bad_rows):
        return f"rows {rows.tolist()} (subject_id {np.asarray(sid)[rows].tolist()})"
    return f"rows {rows.tolist()}"


def _check_fields(batch: Batch, specs: tuple[S.FieldSpec, ...]) -> None:
    missing = [f.name for f in specs if f.name not in batch]
    if missing:
        _fail("fields", f"missing field(s) {missing}; present: {sorted(batch)}")
    for f in specs:
        dt = np.asarray(batch[f.name]).dtype
        if dt != np.dtype(f.dtype):
            _fail("fields", f"'{f.name}' has dtype {dt}, expected {np.dtype(f.dtype)}")


def _check_labels(batch: Batch, b: int) -> None:
    for name in (S.SUBJECT, S.LAST_VISIT, S.EVENT, S.NUM_VISITS):
        if np.shape(batch[name]) != (b,):
            _fail("shapes", f"'{name}' has shape {np.shape(batch[name])}, expected ({b},)")
    if not np.array_equal(batch[S.NUM_VISITS], batch[S.LAST_VISIT] + 1):
        _fail("visit_ids", "num_visits != last_visit + 1")
    if bool((batch[S.LAST_VISIT] < 0).any()):
        _fail("visit_ids", "last_visit < 0")


def check_flat_batch(batch: Batch, expected_tokens: np.ndarray | None = None) -> None:
    """Check one flat batch against the tensor contract (see the module doc).

    Args:
        batch: the batch dict.
        expected_tokens: int [B]; real tokens each row must hold (from the data, not from the
            batch), or None to skip ``token_counts``.

    Raises:
        BatchCheckError: the first failed check, by name.
    """
    _check_fields(batch, S.FLAT_FIELDS)
    codes, ages = batch[S.CODES], batch[S.AGES]
    vids, mask = batch[S.VISIT_IDS], batch[S.ATTENTION_MASK]
    per_token = {S.CODES: codes, S.AGES: ages, S.VISIT_IDS: vids, S.ATTENTION_MASK: mask}
    if S.MLM_LABELS in batch:
        per_token[S.MLM_LABELS] = batch[S.MLM_LABELS]
    shape = codes.shape
    if len(shape) != 2:
        _fail("shapes", f"codes must be [B, L], got shape {shape}")
    for name, arr in per_token.items():
        if arr.shape != shape:
            _fail("shapes", f"'{name}' has shape {arr.shape}, codes has {shape}")
    b = shape[0]
    _check_labels(batch, b)
    counts = mask.sum(axis=1)
    if expected_tokens is not None:
        exp = np.asarray(expected_tokens)
        if exp.shape != (b,) or not np.array_equal(counts, exp):
            bad = counts != exp if exp.shape == (b,) else np.ones(b, bool)
            _fail(
                "token_counts",
                f"attention_mask.sum(1) differs from the expected token counts at "
                f"{_first_bad_rows(bad, batch)}: got {counts[bad][:5].tolist()}, "
                f"expected {exp[bad][:5].tolist() if exp.shape == (b,) else exp.tolist()}",
            )
    prefix = np.arange(shape[1])[None, :] < counts[:, None]
    if not np.array_equal(prefix, mask):
        _fail(
            "right_padding",
            f"real tokens are not a prefix of {_first_bad_rows((prefix != mask).any(1), batch)}",
        )
    pad = ~mask
    if bool((vids[pad] != 0).any()):
        _fail(
            "pad_values",
            f"visit_ids on padding must be 0 (seed bug 2) at "
            f"{_first_bad_rows((pad & (vids != 0)).any(1), batch)}",
        )
    if bool((codes[pad] != S.PAD_ID).any()):
        _fail("pad_values", f"codes on padding must be PAD_ID={S.PAD_ID}")
    if bool((ages[pad] != 0).any()):
        _fail("pad_values", "ages on padding must be 0")
    if S.MLM_LABELS in batch and bool((batch[S.MLM_LABELS][pad] != S.IGNORE_INDEX).any()):
        _fail("pad_values", f"mlm_labels on padding must be IGNORE_INDEX={S.IGNORE_INDEX}")
    if bool((codes[mask] == S.PAD_ID).any()):
        _fail(
            "real_codes",
            f"a real token carries PAD_ID at {_first_bad_rows((mask & (codes == S.PAD_ID)).any(1), batch)}"
            " (was the mask derived from visit_ids or codes instead of the lengths?)",
        )
    # Visit ids over real positions: start at 0, steps of 0 or 1, end at last_visit.
    if b and shape[1]:
        step = np.diff(vids, axis=1)
        real_step = mask[:, 1:]
        if bool(((step < 0) & real_step).any()):
            _fail(
                "visit_ids",
                f"visit_ids decrease over real positions at "
                f"{_first_bad_rows(((step < 0) & real_step).any(1), batch)}",
            )
        if bool(((step > 1) & real_step).any()):
            _fail(
                "visit_ids",
                f"visit_ids skip a visit at {_first_bad_rows(((step > 1) & real_step).any(1), batch)}",
            )
        has = counts > 0
        if bool((vids[has, 0] != 0).any()):
            _fail("visit_ids", "the first real token of a row is not in visit 0 (not rebased?)")
        last = vids[np.arange(b), np.maximum(counts - 1, 0)]
        if not np.array_equal(last[has], batch[S.LAST_VISIT][has]):
            bad = has & (last != batch[S.LAST_VISIT])
            _fail(
                "visit_ids",
                f"the last real token's visit id differs from last_visit at {_first_bad_rows(bad, batch)}",
            )


def check_hierarchical_batch(
    batch: Batch,
    expected_visits: np.ndarray | None = None,
    expected_codes: np.ndarray | None = None,
) -> None:
    """Check one hierarchical batch (``codes`` [B, V, C]).

    Args:
        batch: the batch dict.
        expected_visits: int [B] visits per row, or None.
        expected_codes: int [B] codes per row (all visits), or None.

    Raises:
        BatchCheckError: the first failed check, by name.
    """
    _check_fields(batch, S.HIERARCHICAL_FIELDS)
    codes, cmask = batch[S.CODES], batch[S.CODE_MASK]
    vmask, ages, deltas = batch[S.VISIT_MASK], batch[S.AGES], batch[S.TIME_DELTAS]
    if codes.ndim != 3:
        _fail("shapes", f"codes must be [B, V, C], got shape {codes.shape}")
    b, v, c = codes.shape
    if cmask.shape != codes.shape:
        _fail("shapes", f"code_mask has shape {cmask.shape}, codes has {codes.shape}")
    for name, arr in ((S.VISIT_MASK, vmask), (S.AGES, ages), (S.TIME_DELTAS, deltas)):
        if arr.shape != (b, v):
            _fail("shapes", f"'{name}' has shape {arr.shape}, expected {(b, v)}")
    if S.MLM_LABELS in batch and batch[S.MLM_LABELS].shape != codes.shape:
        _fail("shapes", f"mlm_labels has shape {batch[S.MLM_LABELS].shape}, codes {codes.shape}")
    _check_labels(batch, b)
    nvis = vmask.sum(axis=1)
    if not np.array_equal(nvis, batch[S.NUM_VISITS]):
        _fail("token_counts", "visit_mask.sum(1) != num_visits")
    if expected_visits is not None and not np.array_equal(nvis, expected_visits):
        _fail("token_counts", "visit_mask.sum(1) differs from the expected visit counts")
    ncod = cmask.sum(axis=(1, 2))
    if expected_codes is not None and not np.array_equal(ncod, expected_codes):
        _fail("token_counts", "code_mask.sum differs from the expected code counts")
    if not np.array_equal(np.arange(v)[None, :] < nvis[:, None], vmask):
        _fail("right_padding", "real visits are not a prefix of each row")
    per_visit = cmask.sum(axis=2)
    if not np.array_equal(np.arange(c)[None, None, :] < per_visit[:, :, None], cmask):
        _fail("right_padding", "real codes are not a prefix of each visit")
    if bool((cmask & ~vmask[:, :, None]).any()):
        _fail("pad_values", "a code is real in a padded visit slot")
    if bool((vmask & (per_visit == 0)).any()):
        _fail("token_counts", "a real visit has no real code")
    if bool((codes[~cmask] != S.PAD_ID).any()):
        _fail("pad_values", f"codes on padding must be PAD_ID={S.PAD_ID}")
    if bool((codes[cmask] == S.PAD_ID).any()):
        _fail("real_codes", "a real code slot carries PAD_ID")
    if bool((ages[~vmask] != 0).any()) or bool((deltas[~vmask] != 0).any()):
        _fail("pad_values", "ages and time_deltas on padded visits must be 0")
    if S.MLM_LABELS in batch and bool((batch[S.MLM_LABELS][~cmask] != S.IGNORE_INDEX).any()):
        _fail("pad_values", f"mlm_labels on padding must be IGNORE_INDEX={S.IGNORE_INDEX}")


def visit_token_counts(
    visit_ids: np.ndarray, attention_mask: np.ndarray, num_visits: int
) -> np.ndarray:
    """Real tokens per visit slot, int64 [B, V] (seed bug 3: pads carry visit id 0, so count
    ``(visit_ids == t) & mask``, never ``visit_ids == t`` alone)."""
    b = visit_ids.shape[0]
    out = np.zeros((b, num_visits), dtype=np.int64)
    rows = np.broadcast_to(np.arange(b)[:, None], visit_ids.shape)
    m = attention_mask.astype(bool)
    np.add.at(out, (rows[m], visit_ids[m]), 1)
    return out


def real_token_fraction(batches: list[Batch] | tuple[Batch, ...]) -> float:
    """Real tokens / token slots over flat batches."""
    real = sum(int(b[S.ATTENTION_MASK].sum()) for b in batches)
    slots = sum(int(b[S.ATTENTION_MASK].size) for b in batches)
    return real / slots if slots else 0.0
