"""Torch argument checks and the flat visit-slot index, shared by ``models`` and ``objectives``.

Neutral on purpose: the models validate their batches with these helpers and the losses validate
their arguments with the same ones, so neither package imports the other. Every check raises
``ValueError`` naming the argument.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | None = None,
    dtype: torch.dtype | None = None,
    floating: bool = False,
) -> Tensor:
    """Validate one tensor argument.

    Args:
        x: the value to check.
        name: the argument name, used in the error message.
        ndim: required number of dimensions, if any.
        dtype: required dtype, if any.
        floating: require a floating-point dtype.

    Returns:
        ``x``, typed as a Tensor.

    Raises:
        ValueError: naming ``name`` when ``x`` is not a tensor or has the wrong rank or dtype.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_shape(x: Tensor, name: str, shape: Sequence[int], expected: str) -> None:
    """Require ``x.shape == shape``.

    Args:
        x: the tensor to check.
        name: its argument name.
        shape: the required shape.
        expected: what ``shape`` is, for the message (``"logits shape"``, ``"(B, V) ="``).

    Raises:
        ValueError: ``"<name> shape (..) != <expected> (..)"``.
    """
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(x.shape)} != {expected} {tuple(shape)}")


def check_codes(codes: Tensor, vocab_size: int) -> None:
    """Require every code id to lie in ``[0, vocab_size)`` (an empty tensor passes).

    Raises:
        ValueError: naming ``codes`` and ``vocab_size``.
    """
    if codes.numel() > 0 and (int(codes.min()) < 0 or int(codes.max()) >= vocab_size):
        raise ValueError(f"codes must lie in [0, vocab_size={vocab_size})")


def visit_slots(
    visit_ids: Tensor, attention_mask: Tensor, num_visit_slots: int | None = None
) -> tuple[Tensor, int]:
    """Visit index usable by ``scatter`` and the number of visit slots V.

    Args:
        visit_ids: int64 [B, L].
        attention_mask: bool [B, L].
        num_visit_slots: fixed V; default ``max real visit id + 1`` over the batch (dynamic).

    Returns:
        ``(index, V)``: int64 [B, L] with 0 on padding, and V.

    Raises:
        ValueError: if a real visit id is >= ``num_visit_slots``.
    """
    index = visit_ids.masked_fill(~attention_mask, 0)  # [B, L]
    top = int(index.max()) + 1 if index.numel() > 0 else 1
    if num_visit_slots is None:
        return index, top
    if top > num_visit_slots:
        raise ValueError(
            f"num_visit_slots={num_visit_slots} is too small: a real visit id is {top - 1}"
        )
    return index, num_visit_slots
