"""Pure-torch models: flat BEHRT, hierarchical BEHRT, LSTM baseline, heads, LoRA.

Every survival model returns :class:`SurvivalOutput` (per-visit hazard logits [B, V] and the visit
mask [B, V]) and names the batch fields it reads in ``input_fields`` (see :func:`select_inputs`).
The output contracts live in :mod:`ehrsurv_dist.outputs` and the survival curves and risk scores
in :mod:`ehrsurv_dist.hazards` (shared with the objectives); both are re-exported here.
"""

from ehrsurv_dist.hazards import (
    hazards_from_logits,
    last_real_visit,
    log_survival,
    risk_score,
    survival_curve,
)
from ehrsurv_dist.models.behrt import (
    BEHRTEncoder,
    FeedForward,
    MultiHeadAttention,
    TransformerBlock,
    build_attention_mask,
)
from ehrsurv_dist.models.builders import (
    behrt_config,
    behrt_large,
    behrt_medium,
    behrt_small,
    behrt_tiny,
    behrt_xlarge,
    build_pretraining_model,
    build_survival_model,
    example_flat_batch,
    example_hierarchical_batch,
    hierarchical_large,
    hierarchical_medium,
    hierarchical_small,
    hierarchical_tiny,
    hierarchical_xlarge,
    lstm_baseline,
    lstm_tiny,
    preset_parameter_table,
)
from ehrsurv_dist.models.config import BEHRTConfig, HierarchicalConfig, LoRAConfig, LSTMConfig
from ehrsurv_dist.models.embeddings import BEHRTEmbeddings, BinnedEmbedding
from ehrsurv_dist.models.heads import (
    AttentionVisitPooling,
    BEHRTPretraining,
    HazardHead,
    MLMHead,
    NVPHead,
    aggregate_visits,
    pool_patient,
)
from ehrsurv_dist.models.hierarchical import HierarchicalBEHRTSurvival, HierarchicalEncoder
from ehrsurv_dist.models.lora import (
    LoRALinear,
    ParameterReport,
    apply_lora,
    apply_strategy,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameters,
    unmerge_lora,
)
from ehrsurv_dist.models.lstm import LSTMSurvival
from ehrsurv_dist.models.survival import BEHRTSurvival, select_inputs
from ehrsurv_dist.outputs import PretrainingOutput, SurvivalOutput

__all__ = [
    "AttentionVisitPooling",
    "BEHRTConfig",
    "BEHRTEmbeddings",
    "BEHRTEncoder",
    "BEHRTPretraining",
    "BEHRTSurvival",
    "BinnedEmbedding",
    "FeedForward",
    "HazardHead",
    "HierarchicalBEHRTSurvival",
    "HierarchicalConfig",
    "HierarchicalEncoder",
    "LSTMConfig",
    "LSTMSurvival",
    "LoRAConfig",
    "LoRALinear",
    "MLMHead",
    "MultiHeadAttention",
    "NVPHead",
    "ParameterReport",
    "PretrainingOutput",
    "SurvivalOutput",
    "TransformerBlock",
    "aggregate_visits",
    "apply_lora",
    "apply_strategy",
    "behrt_config",
    "behrt_large",
    "behrt_medium",
    "behrt_small",
    "behrt_tiny",
    "behrt_xlarge",
    "build_attention_mask",
    "build_pretraining_model",
    "build_survival_model",
    "example_flat_batch",
    "example_hierarchical_batch",
    "hazards_from_logits",
    "hierarchical_large",
    "hierarchical_medium",
    "hierarchical_small",
    "hierarchical_tiny",
    "hierarchical_xlarge",
    "last_real_visit",
    "load_lora",
    "log_survival",
    "lora_state_dict",
    "lstm_baseline",
    "lstm_tiny",
    "merge_lora",
    "pool_patient",
    "preset_parameter_table",
    "risk_score",
    "save_lora",
    "select_inputs",
    "survival_curve",
    "trainable_parameters",
    "unmerge_lora",
]
