"""What the models return: the output contracts that the objectives and the training loop read.

Neutral, so that ``objectives`` can type its arguments without importing ``models``.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots, ``D`` hidden, ``|V|`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ehrsurv_dist.hazards import hazards_from_logits, survival_curve


@dataclass
class SurvivalOutput:
    """Per-visit hazard logits of a discrete-time survival model (every survival model).

    Attributes:
        logits: float [B, V]; ``h_t = sigmoid(logits[:, t])`` is the hazard of the interval
            after visit t. Entries where ``visit_mask`` is False are 0 and meaningless.
        visit_mask: bool [B, V], True = real visit slot.
        visit_embeddings: float [B, V, D] visit states fed to the head, when requested.
    """

    logits: Tensor
    visit_mask: Tensor
    visit_embeddings: Tensor | None = None

    @property
    def hazards(self) -> Tensor:
        """float [B, V]: ``sigmoid(logits)``, 0 on slots that are not real."""
        return hazards_from_logits(self.logits, self.visit_mask)

    def survival(self, num_steps: int | None = None) -> Tensor:
        """float [B, K]: S(t) for t < K (last hazard held beyond the last real visit)."""
        return survival_curve(self.logits, self.visit_mask, num_steps)


@dataclass
class PretrainingOutput:
    """Outputs of the pretraining model (:class:`~ehrsurv_dist.models.heads.BEHRTPretraining`).

    Attributes:
        hidden_states: [B, L, D] contextual token states (0 on padding).
        mlm_logits: [B, L, |V|] or None when the MLM head is disabled.
        nvp_logits: [B, V, |V|] or None; row t predicts the codes of visit t + 1.
        visit_mask: bool [B, V], True = real visit slot.
    """

    hidden_states: Tensor
    mlm_logits: Tensor | None
    nvp_logits: Tensor | None
    visit_mask: Tensor
