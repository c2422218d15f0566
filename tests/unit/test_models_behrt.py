"""Flat BEHRT: embeddings, attention masks, padding discipline, causality, pinned outputs.

Tiny odd-sized config (vocab 97, embedding 24 -> hidden 32, 4 heads, FFN 37, batch 13) so that a
swapped dimension cannot pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ehrsurv_dist.models import (
    BEHRTConfig,
    BEHRTSurvival,
    aggregate_visits,
    behrt_tiny,
    build_attention_mask,
    example_flat_batch,
    pool_patient,
    select_inputs,
)
from ehrsurv_dist.models.embeddings import BinnedEmbedding, num_bins, sinusoidal_table
from ehrsurv_dist.models.heads import AttentionVisitPooling
from ehrsurv_dist.objectives import discrete_time_nll

VOCAB = 97


def _cfg(**kw: object) -> BEHRTConfig:
    base: dict[str, object] = {"embedding_dim": 24, "hidden_dim": 32, "intermediate_dim": 37}
    base.update(kw)
    return behrt_tiny(VOCAB, 64, **base)


def _model(seed: int = 0, **kw: object) -> BEHRTSurvival:
    torch.manual_seed(seed)
    return BEHRTSurvival(_cfg(**kw)).eval()


def _batch(seed: int = 0, **kw: int) -> dict[str, torch.Tensor]:
    return example_flat_batch(VOCAB, batch_size=13, max_visits=5, max_codes=4, seed=seed, **kw)


@torch.no_grad()
def _run(model: BEHRTSurvival, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**select_inputs(model, batch)).logits


# --- embeddings ---------------------------------------------------------------------------------


def test_age_and_time_bins() -> None:
    assert num_bins(100, 5) == 22 and num_bins(1825, 30) == 62 and num_bins(365, 7) == 54
    age = BinnedEmbedding(100, 5, 8)
    got = age.bucket(torch.tensor([-3.0, 0.0, 4.99, 5.0, 67.0, 100.0, 150.0]))
    assert got.tolist() == [0, 0, 0, 1, 13, 20, 20]


def test_sinusoidal_table_values_and_odd_width() -> None:
    t = sinusoidal_table(10, 7)
    assert t.shape == (10, 7)
    p = torch.arange(10.0)
    torch.testing.assert_close(t[:, 0], torch.sin(p))
    torch.testing.assert_close(t[:, 1], torch.cos(p))
    torch.testing.assert_close(t[:, 6], torch.sin(p * 10000 ** (-6 / 7)))


def test_visit_ids_and_ages_are_fed() -> None:
    # Seed bug 5: the visit embedding was never fed. Changing only visit ids or ages must matter.
    model, b = _model(), _batch()
    base = _run(model, b)
    b2 = dict(b, ages=b["ages"] + 10.0)
    assert not torch.allclose(_run(model, b2), base)
    b3 = dict(b, visit_ids=torch.where(b["attention_mask"], b["visit_ids"] + 1, 0))
    out3 = model(**select_inputs(model, b3)).logits[:, 1:]  # same visits, shifted one slot
    assert not torch.allclose(out3, base, atol=1e-4)


# --- attention mask -----------------------------------------------------------------------------


def test_attention_mask_exact() -> None:
    visit = torch.tensor([[0, 0, 1, 2, 0]])
    valid = torch.tensor([[True, True, True, True, False]])
    causal = build_attention_mask(visit, valid, "visit_causal")[0, 0].int().tolist()
    assert causal == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1],  # a pad query sees only itself: never an empty softmax row
    ]
    bidir = build_attention_mask(visit, valid, "bidirectional")[0, 0].int().tolist()
    assert bidir == [[1, 1, 1, 1, 0]] * 4 + [[0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="attention mode"):
        build_attention_mask(visit, valid, "causal")


# --- padding discipline -------------------------------------------------------------------------


def test_aggregation_example_seed_1_7b() -> None:
    codes = torch.tensor([[1, 2, 3, 0, 0]])
    visit_ids = torch.tensor([[0, 0, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]]).bool()
    H = torch.arange(15, dtype=torch.float64).view(1, 5, 3)
    H[0, 3:] = 1e6  # pads carry visit id 0: they must not touch visit 0
    visits, vmask = aggregate_visits(H, visit_ids, mask)
    assert codes.shape == visit_ids.shape and vmask.tolist() == [[True, True]]
    torch.testing.assert_close(visits[0, 0], (H[0, 0] + H[0, 1]) / 2)
    torch.testing.assert_close(visits[0, 1], H[0, 2])
    with torch.no_grad():
        pooled, pmask = AttentionVisitPooling(3).double()(H, visit_ids, mask)
    assert pmask.tolist() == [[True, True]]
    torch.testing.assert_close(pooled[0, 1], H[0, 2])  # one token: weight exactly 1
    w = (pooled[0, 0] - H[0, 1]) / (H[0, 0] - H[0, 1])  # a convex mix of tokens 0 and 1 only
    assert torch.allclose(w, w[0].expand(3)) and 0 < float(w[0]) < 1


@pytest.mark.parametrize("attention", ["visit_causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("sinusoidal", [False, True])
@torch.no_grad()
def test_padding_invariance(attention: str, pooling: str, sinusoidal: bool) -> None:
    model = _model(attention=attention, visit_pooling=pooling, sinusoidal=sinusoidal)
    b = _batch()
    out = model(**select_inputs(model, b))
    padded = {k: F.pad(v, (0, 11)) if v.dim() == 2 else v for k, v in b.items()}
    # junk under the padding: only attention_mask says what is real
    padded["codes"][:, -11:] = 5
    padded["ages"][:, -11:] = 99.0
    padded["visit_ids"][:, -11:] = 3
    out2 = model(**select_inputs(model, padded))
    assert torch.equal(out.visit_mask, out2.visit_mask)
    torch.testing.assert_close(out2.logits, out.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention", ["visit_causal", "bidirectional"])
def test_fully_padded_row_gives_no_nan(attention: str) -> None:
    model = _model(attention=attention)
    b = _batch()
    b["attention_mask"][4] = False
    b["codes"][4] = 0
    for train in (False, True):
        model.train(train)
        out = model(**select_inputs(model, b))
        assert torch.isfinite(out.logits).all()
        assert not out.visit_mask[4].any() and out.logits[4].abs().sum().item() == 0.0
        out.logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    hidden = model.encoder(b["codes"], b["ages"], b["visit_ids"], b["attention_mask"])
    assert hidden[~b["attention_mask"]].abs().sum().item() == 0.0


# --- causality ----------------------------------------------------------------------------------


def _change_visits_from(b: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Change the codes and ages of every visit >= k (same tokens, same positions)."""
    b2 = {key: v.clone() for key, v in b.items()}
    later = (b["visit_ids"] >= k) & b["attention_mask"]
    b2["codes"][later] = (b["codes"][later] - 3 + 41) % (VOCAB - 3) + 3
    b2["ages"][later] += 17.0
    return b2


def _earlier(b: dict[str, torch.Tensor], k: int, V: int) -> torch.Tensor:
    real = torch.zeros(b["codes"].shape[0], V, dtype=torch.bool)
    real[:, :k] = True
    return real & (torch.arange(V)[None, :] <= b["last_visit"][:, None])


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_visit_causal_isolation(pooling: str) -> None:
    model = _model(visit_pooling=pooling)
    b = _batch(seed=3)
    with torch.no_grad():
        base = model(**select_inputs(model, b))
    for k in (1, 2, 3):
        changed = _run(model, _change_visits_from(b, k))
        earlier = _earlier(b, k, base.logits.shape[1])
        later = base.visit_mask & ~earlier
        assert earlier.any() and later.any()
        # exactly equal: the changed visits are invisible to every earlier visit ...
        assert torch.equal(changed[earlier], base.logits[earlier])
        # ... while the changed visits themselves do move
        assert (changed[later] != base.logits[later]).all()
    # a whole new visit written into a subject's padding changes no existing logit
    # (same L and V, so the comparison can be exact)
    room = (~b["attention_mask"]).sum(1) >= 2
    j = int(torch.nonzero(room & (b["last_visit"] < base.logits.shape[1] - 1))[0])
    i = int(b["attention_mask"][j].sum())
    b2 = {key: v.clone() for key, v in b.items()}
    b2["codes"][j, i : i + 2] = torch.tensor([7, 8])
    b2["ages"][j, i : i + 2] = 90.0
    b2["visit_ids"][j, i : i + 2] = int(b["last_visit"][j]) + 1
    b2["attention_mask"][j, i : i + 2] = True
    out = _run(model, b2)
    assert torch.equal(out[base.visit_mask], base.logits[base.visit_mask])
    assert out[j, int(b["last_visit"][j]) + 1] != 0


def test_bidirectional_leaks_later_visits() -> None:
    # The control for the test above: without the visit-causal mask, later visits DO change
    # earlier hazards, so the isolation test measures the mask, not an accident.
    model = _model(attention="bidirectional")
    b = _batch(seed=3)
    base = _run(model, b)
    changed = _run(model, _change_visits_from(b, 1))
    earlier = _earlier(b, 1, base.shape[1])
    affected = (changed[earlier] - base[earlier]).abs()
    assert float(affected.max()) > 1e-3


# --- fixed-init expected outputs ----------------------------------------------------------------

# Computed once with torch 2.13 (CPU) and hard-coded: any change to init order, embeddings,
# masking, aggregation or the head moves these numbers.
EXPECTED_LOGITS = {
    (0, 0): 0.01624900,
    (0, 1): -0.07185823,
    (0, 4): -0.05120928,
    (2, 0): -0.00895649,
    (12, 3): 0.04994255,
}
EXPECTED_HIDDEN = {(0, 0, 0): 0.32640809, (7, 3, 31): 2.08401108}
EXPECTED_NLL = 1.85178256


@torch.no_grad()
def test_fixed_init_expected_outputs() -> None:
    model = _model(seed=0)  # torch.manual_seed(0), the tiny odd-sized config, eval mode
    b = _batch(seed=0)
    out = model(**select_inputs(model, b))
    assert out.logits.shape == (13, 5) and out.logits.dtype == torch.float32
    for (i, t), value in EXPECTED_LOGITS.items():
        assert abs(out.logits[i, t].item() - value) < 1e-5, (i, t, out.logits[i, t].item())
    assert out.logits[2, 1].item() == 0.0 and not out.visit_mask[2, 1]  # subject 2: one visit
    hidden = model.encoder(b["codes"], b["ages"], b["visit_ids"], b["attention_mask"])
    for idx, value in EXPECTED_HIDDEN.items():
        assert abs(hidden[idx].item() - value) < 1e-5, (idx, hidden[idx].item())
    nll = discrete_time_nll(out.logits, b["last_visit"], b["event"], out.visit_mask)
    assert abs(nll.item() - EXPECTED_NLL) < 1e-5


# --- shapes, options, validation ----------------------------------------------------------------


@torch.no_grad()
def test_num_visit_slots_fixes_V() -> None:
    model, b = _model(), _batch()
    dyn = model(**select_inputs(model, b))
    fixed = model(**select_inputs(model, b), num_visit_slots=9, return_visit_embeddings=True)
    assert fixed.logits.shape == (13, 9) and fixed.visit_embeddings is not None
    assert fixed.visit_embeddings.shape == (13, 9, 32)
    torch.testing.assert_close(fixed.logits[:, :5], dyn.logits)
    assert not fixed.visit_mask[:, 5:].any()
    with pytest.raises(ValueError, match="num_visit_slots"):
        model(**select_inputs(model, b), num_visit_slots=3)
    h = fixed.hazards
    assert float(h[~fixed.visit_mask].abs().sum()) == 0.0 and (h >= 0).all() and (h <= 1).all()
    assert fixed.survival(12).shape == (13, 12)


def test_sequence_longer_than_max_position_raises() -> None:
    model = BEHRTSurvival(_cfg(max_position=64))
    b = _batch(seq_len=65)
    with pytest.raises(ValueError, match="max_position"):
        model(**select_inputs(model, b))


def test_input_validation_names_the_argument() -> None:
    model, b = _model(), _batch()
    bad = [
        ("codes", b["codes"].float()),
        ("codes", b["codes"][0]),
        ("codes", torch.full_like(b["codes"], VOCAB)),
        ("ages", b["ages"].long()),
        ("ages", b["ages"][:, :-1]),
        ("visit_ids", b["visit_ids"].int()),
        ("visit_ids", b["visit_ids"] - 5),
        ("attention_mask", b["attention_mask"].long()),
    ]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            model(**select_inputs(model, dict(b, **{name: value})))
    with pytest.raises(ValueError, match="batch is missing"):
        select_inputs(model, {"codes": b["codes"]})


def test_config_errors_name_the_field() -> None:
    for kw, name in [
        ({"hidden_dim": 30, "num_heads": 4}, "num_heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"attention": "causal"}, "attention"),
        ({"visit_pooling": "max"}, "visit_pooling"),
        ({"vocab_size": 2}, "vocab_size"),
        ({"max_position": 0}, "max_position"),
        ({"tie_mlm_weights": True, "embedding_dim": 16}, "tie_mlm_weights"),
        ({"intermediate_dim": -1}, "intermediate_dim"),
    ]:
        with pytest.raises(ValueError, match=name):
            BEHRTConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocab_size"):
        BEHRTSurvival(BEHRTConfig())


def test_pool_patient_modes() -> None:
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [0.0], [0.0]]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert pool_patient(h, m, "mean").tolist() == [[2.0], [0.0]]
    assert pool_patient(h, m, "max").tolist() == [[3.0], [0.0]]
    assert pool_patient(h, m, "first").tolist() == [[1.0], [0.0]]
    with pytest.raises(ValueError, match="mode"):
        pool_patient(h, m, "cls")


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_bf16_autocast_gives_float32_logits(pooling: str) -> None:
    model, b = _model(visit_pooling=pooling), _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**select_inputs(model, b))
        loss = discrete_time_nll(out.logits, b["last_visit"], b["event"], out.visit_mask)
    assert out.logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    with torch.no_grad():
        ref = model(**select_inputs(model, b)).logits
    torch.testing.assert_close(out.logits.detach(), ref, atol=0.02, rtol=0)
