"""NVP targets and the pretraining losses against naive loops.

(MLM masking is the data pipeline's ``data.masking.mlm_mask``: tests/unit/test_masking.py checks
its rates, that PAD/UNK are never selected, and its determinism.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ehrsurv_dist.models import example_flat_batch
from ehrsurv_dist.objectives import (
    build_nvp_targets,
    joint_pretraining_loss,
    mlm_loss,
    nvp_loss,
)
from ehrsurv_dist.schema import IGNORE_INDEX, NUM_SPECIAL_TOKENS, UNK_ID

VOCAB = 97


def test_nvp_targets_match_naive_loop() -> None:
    b = example_flat_batch(VOCAB, batch_size=13, max_visits=5, max_codes=4, seed=4, seq_len=25)
    rows, cols = ((b["visit_ids"] >= 1) & b["attention_mask"]).nonzero()[::3].T
    b["codes"][rows, cols] = UNK_ID  # special ids never appear in targets
    b["visit_ids"][~b["attention_mask"]] = 4  # junk under padding must be ignored
    targets, valid = build_nvp_targets(b["codes"], b["visit_ids"], b["attention_mask"], VOCAB)
    V = 5
    assert targets.shape == (13, V, VOCAB) and valid.shape == (13, V)
    want = torch.zeros(13, V, VOCAB)
    want_valid = torch.zeros(13, V, dtype=torch.bool)
    for i in range(13):
        T = int(b["last_visit"][i])
        for t in range(T):
            want_valid[i, t] = True
            for code, vid, m in zip(
                b["codes"][i], b["visit_ids"][i], b["attention_mask"][i], strict=True
            ):
                if m and int(vid) == t + 1 and int(code) >= NUM_SPECIAL_TOKENS:
                    want[i, t, int(code)] = 1.0
    assert torch.equal(valid, want_valid)
    assert torch.equal(targets, want)
    fixed, fvalid = build_nvp_targets(
        b["codes"], b["visit_ids"], b["attention_mask"], VOCAB, num_visit_slots=8
    )
    assert fixed.shape == (13, 8, VOCAB) and torch.equal(fixed[:, :V], want)
    assert not fvalid[:, V:].any()


def test_mlm_loss_matches_naive_and_handles_no_labels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, VOCAB, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[0, 1], labels[2, 5], labels[1, 0] = 7, 50, 96
    want = (
        -sum(
            F.log_softmax(logits[i, j].detach(), -1)[labels[i, j]].item()
            for i, j in ((0, 1), (2, 5), (1, 0))
        )
        / 3
    )
    assert abs(mlm_loss(logits, labels).item() - want) < 1e-6
    empty = mlm_loss(logits, torch.full((3, 6), IGNORE_INDEX))
    assert empty.item() == 0.0
    empty.backward()  # graph intact, no NaN
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="labels"):
        mlm_loss(logits, labels[:, :-1])


def test_nvp_loss_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 11, generator=g, dtype=torch.float64)
    targets = (torch.rand(4, 3, 11, generator=g) < 0.3).double()
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]]).bool()
    terms = []
    for i in range(4):
        for t in range(3):
            if valid[i, t]:
                p = torch.sigmoid(logits[i, t])
                y = targets[i, t]
                terms.append((-(y * p.log() + (1 - y) * (1 - p).log())).mean().item())
    assert abs(nvp_loss(logits, targets, valid).item() - sum(terms) / len(terms)) < 1e-6
    assert nvp_loss(logits, targets, torch.zeros_like(valid)).item() == 0.0
    with pytest.raises(ValueError, match="valid"):
        nvp_loss(logits, targets, valid.long())
    with pytest.raises(ValueError, match="targets"):
        nvp_loss(logits, targets[:, :, :-1], valid)


def test_joint_weights() -> None:
    a, b = torch.tensor(2.0), torch.tensor(3.0)
    total, parts = joint_pretraining_loss(a, b, 0.5, 2.0)
    assert total.item() == 7.0 and set(parts) == {"mlm", "nvp", "total"}
    total, parts = joint_pretraining_loss(None, b, 0.5, 2.0)
    assert total.item() == 6.0 and set(parts) == {"nvp", "total"}
    with pytest.raises(ValueError):
        joint_pretraining_loss(None, None)
