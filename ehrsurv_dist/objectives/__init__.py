"""Pure-torch training objectives (survival and pretraining).

The public likelihood (docs/design.md §5) is
``discrete_time_nll(logits, last_visit, event, visit_mask, reduction="mean")``; on the
calendar axis it is ``calendar_nll(logits, bin_index, event, reduction="mean")``.
"""

from ehrsurv_dist.objectives.cox import CoxLoss, cox_log_risk, cox_partial_likelihood
from ehrsurv_dist.objectives.pretraining import (
    JointPretrainingLoss,
    MLMLoss,
    NVPLoss,
    build_nvp_targets,
    joint_pretraining_loss,
    mlm_loss,
    nvp_loss,
)
from ehrsurv_dist.objectives.survival import (
    DiscreteTimeNLLLoss,
    HybridSurvivalLoss,
    PairwiseRankingLoss,
    calendar_nll,
    comparable_pairs,
    curriculum_lambda_rank,
    discrete_time_nll,
    hybrid_survival_loss,
    logistic_ranking_loss,
    pairwise_ranking_loss,
)

__all__ = [
    "CoxLoss",
    "DiscreteTimeNLLLoss",
    "HybridSurvivalLoss",
    "JointPretrainingLoss",
    "MLMLoss",
    "NVPLoss",
    "PairwiseRankingLoss",
    "build_nvp_targets",
    "calendar_nll",
    "comparable_pairs",
    "cox_log_risk",
    "cox_partial_likelihood",
    "curriculum_lambda_rank",
    "discrete_time_nll",
    "hybrid_survival_loss",
    "joint_pretraining_loss",
    "logistic_ranking_loss",
    "mlm_loss",
    "nvp_loss",
    "pairwise_ranking_loss",
]
