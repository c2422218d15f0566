"""MLM / NVP heads and the pretraining model: tying, shapes, next-visit causality."""

from __future__ import annotations

import pytest
import torch

from ehrsurv_dist.data.masking import mlm_mask
from ehrsurv_dist.models import (
    BEHRTPretraining,
    HazardHead,
    MLMHead,
    behrt_tiny,
    build_pretraining_model,
    example_flat_batch,
)
from ehrsurv_dist.objectives import JointPretrainingLoss, build_nvp_targets
from ehrsurv_dist.schema import IGNORE_INDEX

VOCAB = 97


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return example_flat_batch(VOCAB, batch_size=13, max_visits=5, max_codes=4, seed=seed)


def _inputs(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: b[k] for k in BEHRTPretraining.input_fields}


def _mlm_masked(b: dict[str, torch.Tensor], prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked codes, mlm_labels)`` [B, L] as the data pipeline masks the real tokens."""
    real = b["attention_mask"]
    B, L = real.shape
    subject = torch.arange(B)[:, None].expand(B, L)[real].numpy()
    position = torch.arange(L)[None, :].expand(B, L)[real].numpy()
    codes, labels = mlm_mask(
        b["codes"][real].numpy(), subject, position, VOCAB, seed=0, epoch=0, prob=prob
    )
    masked, full_labels = b["codes"].clone(), torch.full((B, L), IGNORE_INDEX)
    masked[real], full_labels[real] = torch.from_numpy(codes), torch.from_numpy(labels)
    return masked, full_labels


def test_tied_mlm_head_shares_the_code_embedding() -> None:
    torch.manual_seed(0)
    cfg = behrt_tiny(
        VOCAB, 64, hidden_dim=32, embedding_dim=32, intermediate_dim=37, tie_mlm_weights=True
    )
    model = build_pretraining_model(cfg, nvp=False)
    assert model.mlm_head is not None
    emb = model.encoder.embeddings.code_embedding.weight
    assert model.mlm_head.decoder.weight is emb
    # counted once
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if "decoder.weight" not in n
    )
    b = _batch()
    out = model(**_inputs(b))
    assert out.mlm_logits is not None and out.mlm_logits.shape == (13, b["codes"].shape[1], VOCAB)
    assert out.nvp_logits is None
    out.mlm_logits[:, :, 50].sum().backward()
    assert emb.grad is not None and emb.grad[50].abs().sum() > 0  # via the output projection
    with pytest.raises(ValueError, match="tied_embedding"):
        MLMHead(32, VOCAB, torch.nn.Embedding(VOCAB, 16))


def test_untied_heads_and_shapes() -> None:
    torch.manual_seed(0)
    model = build_pretraining_model(behrt_tiny(VOCAB, 64, embedding_dim=24, intermediate_dim=37))
    assert model.mlm_head is not None and model.nvp_head is not None
    assert model.mlm_head.decoder.weight is not model.encoder.embeddings.code_embedding.weight
    b = _batch()
    out = model(**_inputs(b))
    assert out.nvp_logits is not None and out.nvp_logits.shape == (13, 5, VOCAB)
    assert out.visit_mask.sum(1).tolist() == b["num_visits"].tolist()
    assert out.hidden_states.shape == (13, b["codes"].shape[1], 32)


def test_nvp_refuses_bidirectional_attention() -> None:
    cfg = behrt_tiny(VOCAB, 64, attention="bidirectional")
    with pytest.raises(ValueError, match="visit_causal"):
        BEHRTPretraining(cfg, nvp=True)
    BEHRTPretraining(cfg, mlm=True, nvp=False)  # MLM alone is fine
    with pytest.raises(ValueError, match="mlm and nvp"):
        BEHRTPretraining(behrt_tiny(VOCAB, 64), mlm=False, nvp=False)


@torch.no_grad()
def test_nvp_prediction_for_visit_t_cannot_see_its_target() -> None:
    # Row t predicts visit t + 1; changing visit t + 1 (the target) must not move row t.
    torch.manual_seed(0)
    model = build_pretraining_model(behrt_tiny(VOCAB, 64), mlm=False).eval()
    b = _batch(seed=2)
    base = model(**_inputs(b)).nvp_logits
    b2 = {k: v.clone() for k, v in b.items()}
    later = (b["visit_ids"] >= 2) & b["attention_mask"]
    b2["codes"][later] = (b["codes"][later] + 11 - 3) % (VOCAB - 3) + 3
    changed = model(**_inputs(b2)).nvp_logits
    assert base is not None and changed is not None
    assert torch.equal(changed[:, :2], base[:, :2])
    assert not torch.equal(changed[:, 2:], base[:, 2:])


def test_joint_pretraining_step_runs_and_weights() -> None:
    torch.manual_seed(0)
    model = build_pretraining_model(behrt_tiny(VOCAB, 64))
    b = _batch()
    masked, labels = _mlm_masked(b, prob=0.3)
    assert (labels != IGNORE_INDEX).any()
    targets, valid = build_nvp_targets(b["codes"], b["visit_ids"], b["attention_mask"], VOCAB)
    out = model(**dict(_inputs(b), codes=masked))
    total, parts = JointPretrainingLoss(mlm_weight=0.5, nvp_weight=2.0)(out, labels, targets, valid)
    assert total.item() == pytest.approx(0.5 * parts["mlm"].item() + 2.0 * parts["nvp"].item())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    with pytest.raises(ValueError, match="mlm_labels"):
        JointPretrainingLoss()(out, None, targets, valid)
    with pytest.raises(ValueError, match="nvp_targets"):
        JointPretrainingLoss()(out, labels)


def test_hazard_head_zeroes_padded_visits() -> None:
    head = HazardHead(8, 5, 0.0)
    x = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        logits = head(x, mask)
    assert logits.shape == (2, 3)
    assert logits[~mask].abs().sum().item() == 0.0 and logits[mask].abs().sum().item() > 0
