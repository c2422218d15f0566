"""Pretraining objectives: MLM loss, next-visit targets and loss, joint weighting.

MLM masking happens in the data pipeline (:func:`ehrsurv_dist.data.masking.mlm_mask`): a batch
arrives with masked ``codes`` and ``mlm_labels``.

- :func:`build_nvp_targets`: from a flat batch, the multi-hot codes of visit t + 1 for every
  visit t, built with one ``scatter_add`` (no loop over subjects).
- :func:`mlm_loss`, :func:`nvp_loss`, :func:`joint_pretraining_loss` and module wrappers.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots, ``|V|`` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.outputs import PretrainingOutput
from ehrsurv_dist.schema import IGNORE_INDEX, NUM_SPECIAL_TOKENS
from ehrsurv_dist.tensors import check_codes, check_shape, check_tensor, visit_slots


def build_nvp_targets(
    codes: Tensor,
    visit_ids: Tensor,
    attention_mask: Tensor,
    vocab_size: int,
    num_visit_slots: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Next-visit multi-hot targets from a flat batch (pass the *unmasked* codes).

    ``targets[b, t, c] = 1`` iff code c occurs in visit t + 1 of subject b. Special-token columns
    are always 0. ``valid[b, t]`` is True iff visits t and t + 1 are both real, so the loss runs
    over t < the last real visit; the last slot is never valid.

    Args:
        codes: int64 [B, L].
        visit_ids: int64 [B, L].
        attention_mask: bool [B, L].
        vocab_size: |V|.
        num_visit_slots: fixed V (default: dynamic, as the model's aggregation).

    Returns:
        ``(targets, valid)``: float32 [B, V, |V|] and bool [B, V].
    """
    check_tensor(codes, "codes", ndim=2, dtype=torch.int64)
    check_tensor(visit_ids, "visit_ids", ndim=2, dtype=torch.int64)
    check_tensor(attention_mask, "attention_mask", ndim=2, dtype=torch.bool)
    for name, t in (("visit_ids", visit_ids), ("attention_mask", attention_mask)):
        check_shape(t, name, codes.shape, "codes shape")
    check_codes(codes, vocab_size)
    B = codes.shape[0]
    index, V = visit_slots(visit_ids, attention_mask, num_visit_slots)  # [B, L], pads -> visit 0
    flat = index * vocab_size + codes  # [B, L], position in the [V * |V|] grid
    m = attention_mask.to(torch.float32)
    counts = torch.zeros(B, V * vocab_size, device=codes.device).scatter_add_(1, flat, m)
    present = counts.view(B, V, vocab_size) > 0  # [B, V * |V|] -> [B, V, |V|]
    present[:, :, :NUM_SPECIAL_TOKENS] = False
    visit_mask = torch.zeros(B, V, device=codes.device).scatter_add_(1, index, m) > 0  # [B, V]
    targets = torch.zeros(B, V, vocab_size, device=codes.device)
    targets[:, :-1] = present[:, 1:].to(torch.float32)
    valid = torch.zeros_like(visit_mask)
    valid[:, :-1] = visit_mask[:, :-1] & visit_mask[:, 1:]
    return targets, valid


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

    Args:
        logits: float [B, L, |V|].
        labels: int64 [B, L].

    Returns:
        Mean over labelled positions; 0 (graph intact) when nothing is labelled.
    """
    check_tensor(logits, "logits", ndim=3, floating=True)
    check_tensor(labels, "labels", ndim=2, dtype=torch.int64)
    check_shape(labels, "labels", logits.shape[:2], "logits [B, L]")
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    V = logits.shape[-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, V),  # [B, L, |V|] -> [B*L, |V|]
        labels.reshape(-1),  # [B, L] -> [B*L]
        ignore_index=IGNORE_INDEX,
    )


def nvp_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Binary cross-entropy with logits over every code of every valid visit.

    Args:
        logits: float [B, V, |V|] (row t predicts visit t + 1).
        targets: float [B, V, |V|] multi-hot (see :func:`build_nvp_targets`).
        valid: bool [B, V].

    Returns:
        Mean over valid visits and codes; 0 (graph intact) without a valid visit.
    """
    check_tensor(logits, "logits", ndim=3, floating=True)
    check_tensor(targets, "targets", ndim=3, floating=True)
    check_tensor(valid, "valid", ndim=2, dtype=torch.bool)
    check_shape(targets, "targets", logits.shape, "logits shape")
    check_shape(valid, "valid", logits.shape[:2], "logits [B, V]")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    per_entry = F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), reduction="none"
    )  # [B, V, |V|]
    per_visit = per_entry.mean(-1)  # [B, V]
    total = torch.where(valid, per_visit, torch.zeros_like(per_visit)).sum()
    return total / valid.sum().clamp(min=1).to(logits.dtype)


def joint_pretraining_loss(
    mlm: Tensor | None,
    nvp: Tensor | None,
    mlm_weight: float = 1.0,
    nvp_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``mlm_weight * L_mlm + nvp_weight * L_nvp`` (a missing term is left out).

    Returns:
        ``(total, {"mlm", "nvp", "total"})`` with detached scalars for logging (present terms).
    """
    if mlm is None and nvp is None:
        raise ValueError("at least one of mlm and nvp must be given")
    parts: dict[str, Tensor] = {}
    terms: list[Tensor] = []
    if mlm is not None:
        terms.append(mlm_weight * mlm)
        parts["mlm"] = mlm.detach()
    if nvp is not None:
        terms.append(nvp_weight * nvp)
        parts["nvp"] = nvp.detach()
    total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    parts["total"] = total.detach()
    return total, parts


class MLMLoss(nn.Module):
    """Module wrapper of :func:`mlm_loss`."""

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return mlm_loss(logits, labels)


class NVPLoss(nn.Module):
    """Module wrapper of :func:`nvp_loss`."""

    def forward(self, logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        return nvp_loss(logits, targets, valid)


class JointPretrainingLoss(nn.Module):
    """Weighted MLM + NVP on a :class:`~ehrsurv_dist.outputs.PretrainingOutput`."""

    def __init__(self, mlm_weight: float = 1.0, nvp_weight: float = 1.0) -> None:
        super().__init__()
        self.mlm_weight, self.nvp_weight = mlm_weight, nvp_weight

    def forward(
        self,
        output: PretrainingOutput,
        mlm_labels: Tensor | None = None,
        nvp_targets: Tensor | None = None,
        nvp_valid: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Args: the model output and the labels of the heads it has.

        Raises:
            ValueError: if a head's output is present without its labels.
        """
        mlm = nvp = None
        if output.mlm_logits is not None:
            if mlm_labels is None:
                raise ValueError("mlm_labels is required: the model has an MLM head")
            mlm = mlm_loss(output.mlm_logits, mlm_labels)
        if output.nvp_logits is not None:
            if nvp_targets is None or nvp_valid is None:
                raise ValueError(
                    "nvp_targets and nvp_valid are required: the model has an NVP head"
                )
            nvp = nvp_loss(output.nvp_logits, nvp_targets, nvp_valid)
        return joint_pretraining_loss(mlm, nvp, self.mlm_weight, self.nvp_weight)
