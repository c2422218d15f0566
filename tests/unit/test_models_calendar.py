"""Calendar heads (``num_bins = K > 0``) of the flat BEHRT, hierarchical BEHRT and LSTM models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ehrsurv_dist.bins import bin_index
from ehrsurv_dist.errors import ConfigError
from ehrsurv_dist.models import (
    BEHRTPretraining,
    aggregate_visits,
    behrt_tiny,
    build_survival_model,
    example_flat_batch,
    example_hierarchical_batch,
    hierarchical_tiny,
    lstm_tiny,
    select_inputs,
)
from ehrsurv_dist.models.calendar import (
    TimeBeforePrediction,
    days_before_prediction,
    last_visit_index,
)
from ehrsurv_dist.models.lora import parameter_component
from ehrsurv_dist.objectives import calendar_nll
from ehrsurv_dist.schema import (
    AGES,
    ATTENTION_MASK,
    CODE_MASK,
    CODES,
    NUM_VISITS,
    PAD_ID,
    PREDICTION_AGE,
    TIME_DELTAS,
    VISIT_IDS,
    VISIT_MASK,
)

VOCAB = 40
K = 5
NEW = ("before_prediction.", "calendar_head.")

Config = Callable[..., Any]
CONFIGS: dict[str, Config] = {
    "flat": lambda **kw: behrt_tiny(VOCAB, 32, **kw),
    "flat_attn": lambda **kw: behrt_tiny(VOCAB, 32, visit_pooling="attention", **kw),
    "hier": lambda **kw: hierarchical_tiny(VOCAB, **kw),
    "lstm": lambda **kw: lstm_tiny(VOCAB, **kw),
}


def _batch(kind: str, seed: int = 3, **kw: int) -> dict[str, Tensor]:
    """The example batch plus a prediction age 0..2 years after each subject's last visit."""
    if kind.startswith("flat"):
        b = example_flat_batch(VOCAB, seed=seed, **kw)
        last_age = b[AGES].masked_fill(~b[ATTENTION_MASK], 0.0).amax(1)
    else:
        b = example_hierarchical_batch(VOCAB, seed=seed, **kw)
        last_age = b[AGES].masked_fill(~b[VISIT_MASK], 0.0).amax(1)
    g = torch.Generator().manual_seed(seed + 100)
    b[PREDICTION_AGE] = last_age + 2.0 * torch.rand(last_age.shape[0], generator=g)
    return b


def _model(kind: str, num_bins: int = K, **kw: Any) -> Any:
    """A survival model in eval mode (Any: the tests read its calendar submodules by name)."""
    torch.manual_seed(0)
    return build_survival_model(CONFIGS[kind](num_bins=num_bins, **kw)).eval()


# --- shapes, fields, K = 0 unchanged -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_calendar_shapes(kind: str) -> None:
    m, b = _model(kind), _batch(kind)
    out = m(**select_inputs(m, b))
    B = b[CODES].shape[0]
    assert out.logits.shape == (B, K) and out.logits.dtype == torch.float32
    assert out.visit_mask.shape == (B, K) and out.visit_mask.dtype == torch.bool
    assert bool(out.visit_mask.all())
    assert out.hazards.shape == (B, K) and bool(((out.hazards > 0) & (out.hazards < 1)).all())
    s = out.survival()
    assert s.shape == (B, K) and bool((s[:, 1:] <= s[:, :-1]).all())
    assert PREDICTION_AGE in m.input_fields
    assert not hasattr(m, "head")  # no per-visit head on the calendar axis


def test_input_fields() -> None:
    assert _model("lstm").input_fields == (CODES, CODE_MASK, VISIT_MASK, AGES, PREDICTION_AGE)
    assert _model("lstm", 0).input_fields == (CODES, CODE_MASK, VISIT_MASK)
    assert _model("flat", 0).input_fields == (CODES, AGES, VISIT_IDS, ATTENTION_MASK)
    assert _model("hier").input_fields == (
        CODES,
        AGES,
        TIME_DELTAS,
        CODE_MASK,
        VISIT_MASK,
        PREDICTION_AGE,
    )


# Pinned on the commit before num_bins existed (torch.manual_seed(0), tiny presets, eval,
# example batch seed 3): number of state_dict entries and the sum of the per-visit logits.
PINNED_K0 = {
    "flat_attn": (49, -3.292998492717743),
    "hier": (36, -1.2115611238405108),
    "lstm": (11, 2.260014835745096),
}


@pytest.mark.parametrize("kind", list(PINNED_K0))
def test_num_bins_zero_is_unchanged(kind: str) -> None:
    m = _model(kind, 0)
    b = _batch(kind)
    b.pop(PREDICTION_AGE)
    out = m(**select_inputs(m, b))
    n_keys, total = PINNED_K0[kind]
    assert len(m.state_dict()) == n_keys
    assert not any(k.startswith(NEW) for k in m.state_dict())
    assert float(out.logits.detach().double().sum()) == pytest.approx(total, rel=1e-6, abs=1e-9)
    assert out.logits.shape == out.visit_mask.shape


def test_num_bins_validated() -> None:
    for make in (CONFIGS["flat"], CONFIGS["hier"], CONFIGS["lstm"]):
        with pytest.raises(ConfigError, match="num_bins"):
            make(num_bins=-1)


@pytest.mark.parametrize("kind", ["flat", "hier", "lstm"])
def test_prediction_age_required_and_only_on_calendar_axis(kind: str) -> None:
    m, b = _model(kind), _batch(kind)
    inputs = select_inputs(m, b)
    inputs.pop(PREDICTION_AGE)
    with pytest.raises(ValueError, match="prediction_age is required"):
        m(**inputs)
    m0 = _model(kind, 0)
    with pytest.raises(ValueError, match="only read on the calendar axis"):
        m0(**select_inputs(m0, b), prediction_age=b[PREDICTION_AGE])


def test_bidirectional_allowed_on_calendar_axis() -> None:
    m, b = _model("flat", attention="bidirectional"), _batch("flat")
    assert m(**select_inputs(m, b)).logits.shape == (b[CODES].shape[0], K)


# --- padding invariance, the last real visit ----------------------------------------------------


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_padding_invariance(kind: str) -> None:
    m = _model(kind)
    if kind.startswith("flat"):
        small, big = _batch(kind), _batch(kind, seq_len=30)
        assert big[CODES].shape[1] > small[CODES].shape[1]
    else:
        small = _batch(kind)
        # more visit slots and more code slots, all padding
        big = {k: v.clone() for k, v in small.items()}
        B, V, C = small[CODES].shape
        pad = {
            CODES: torch.full((B, V + 3, C + 2), PAD_ID),
            CODE_MASK: torch.zeros(B, V + 3, C + 2, dtype=torch.bool),
        }
        pad[CODES][:, :V, :C] = small[CODES]
        pad[CODE_MASK][:, :V, :C] = small[CODE_MASK]
        big.update(pad)
        for name in (AGES, TIME_DELTAS):
            big[name] = torch.cat([small[name], torch.full((B, 3), 77.0)], 1)  # junk on pads
        big[VISIT_MASK] = torch.cat([small[VISIT_MASK], torch.zeros(B, 3, dtype=torch.bool)], 1)
    a = m(**select_inputs(m, small)).logits
    c = m(**select_inputs(m, big)).logits
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_head_reads_the_last_real_visit(kind: str) -> None:
    m, b = _model(kind), _batch(kind)
    seen: list[Tensor] = []
    m.calendar_head.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    out = m(**select_inputs(m, b), return_visit_embeddings=True)
    assert out.visit_embeddings is not None
    last = b[NUM_VISITS] - 1
    V = out.visit_embeddings.shape[1]
    vmask = torch.arange(V)[None, :] < b[NUM_VISITS][:, None]  # visits are 0..T in the example
    assert torch.equal(last_visit_index(vmask), last)
    want = out.visit_embeddings[torch.arange(last.shape[0]), last]  # [B, D]
    assert torch.equal(seen[0], want)


def test_last_visit_index_of_an_empty_sample_is_zero() -> None:
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    assert last_visit_index(mask).tolist() == [1, 0, 2]


def test_lstm_later_padding_and_earlier_visits() -> None:
    """The LSTM is past-only: a code after the last real visit (in a padded slot) changes
    nothing; a code in an earlier real visit changes the output (through the recurrence)."""
    m, b = _model("lstm"), _batch("lstm")
    base = m(**select_inputs(m, b)).logits
    i = int(torch.nonzero(b[NUM_VISITS] >= 2)[0])
    changed = {k: v.clone() for k, v in b.items()}
    changed[CODES][i, 0, 0] = 5 if int(b[CODES][i, 0, 0]) != 5 else 6
    out = m(**select_inputs(m, changed)).logits
    assert not torch.allclose(out[i], base[i])
    others = torch.arange(base.shape[0]) != i
    torch.testing.assert_close(out[others], base[others])


# --- time before the prediction -----------------------------------------------------------------


def test_days_before_prediction_values() -> None:
    pa = torch.tensor([70.0, 50.0])
    ages = torch.tensor([[69.0, 70.0, 70.5], [49.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    d = days_before_prediction(pa, ages, mask)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, torch.tensor([[365.25, 0.0, 0.0], [182.625, 0.0, 0.0]]))


def test_time_embedding_log_buckets_and_zero_init() -> None:
    emb = TimeBeforePrediction(8)
    days = torch.tensor([0.0, 1.0, 30.0, 365.0, 3650.0, 1e9])
    buckets = emb.bucket(days)
    assert buckets.tolist()[0] == 0 and buckets.tolist()[-1] == emb.num_buckets - 1
    assert (buckets[1:] > buckets[:-1]).all()  # distinct gaps are distinguishable
    assert int(emb.bucket(torch.tensor([30.0]))) == int(torch.log1p(torch.tensor(30.0)) / 0.25)
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert bool((emb(days[None], mask) == 0).all())  # zero-initialised output projection


@pytest.mark.parametrize("kind", ["flat", "hier", "lstm"])
def test_gaps_are_visible_once_trained(kind: str) -> None:
    m, b = _model(kind), _batch(kind)
    later = dict(b)
    later[PREDICTION_AGE] = b[PREDICTION_AGE] + 3.0
    a = m(**select_inputs(m, b)).logits
    torch.testing.assert_close(m(**select_inputs(m, later)).logits, a)  # zero at init
    with torch.no_grad():
        nn.init.normal_(m.before_prediction.proj.weight, std=0.5)
    a = m(**select_inputs(m, b)).logits
    assert not torch.allclose(m(**select_inputs(m, later)).logits, a, atol=1e-4)


# --- loading a visit-axis / pretrained encoder ----------------------------------------------------


def _check_missing(missing: list[str]) -> None:
    assert missing, "the new modules must be missing"
    assert all(k.startswith(NEW) for k in missing), missing
    assert any(k.startswith("before_prediction.") for k in missing)
    assert any(k.startswith("calendar_head.") for k in missing)


def test_load_pretrained_flat_encoder_keeps_states() -> None:
    torch.manual_seed(1)
    pre = BEHRTPretraining(behrt_tiny(VOCAB, 32)).eval()
    m = _model("flat")
    res = m.load_state_dict(pre.state_dict(), strict=False)
    _check_missing(res.missing_keys)
    assert all(k.startswith(("mlm_head.", "nvp_head.")) for k in res.unexpected_keys)
    b = _batch("flat")
    out = m(**select_inputs(m, b), return_visit_embeddings=True)
    fields = {k: b[k] for k in pre.input_fields}
    visits, _ = aggregate_visits(pre.encoder(**fields), b[VISIT_IDS], b[ATTENTION_MASK])
    assert out.visit_embeddings is not None
    torch.testing.assert_close(out.visit_embeddings, visits, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("kind", ["flat_attn", "hier", "lstm"])
def test_load_visit_axis_model_keeps_states(kind: str) -> None:
    src = _model(kind, 0)
    m = _model(kind)
    with torch.no_grad():  # make sure the weights really come from src
        for p in m.parameters():
            p.add_(1.0)
        nn.init.zeros_(m.before_prediction.proj.weight)
        nn.init.zeros_(m.before_prediction.proj.bias)
    res = m.load_state_dict(src.state_dict(), strict=False)
    _check_missing(res.missing_keys)
    assert res.unexpected_keys and all(k.startswith("head.") for k in res.unexpected_keys)
    b = _batch(kind)
    got = m(**select_inputs(m, b), return_visit_embeddings=True).visit_embeddings
    want = src(**select_inputs(src, b), return_visit_embeddings=True).visit_embeddings
    assert got is not None and want is not None
    torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)


# --- gradients, LoRA components -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hier", "lstm"])
def test_gradients_reach_head_and_time_embedding(kind: str) -> None:
    m, b = _model(kind), _batch(kind)
    m.train()
    B = b[CODES].shape[0]
    g = torch.Generator().manual_seed(0)
    t = torch.rand(B, generator=g).double() * 400.0
    ev = torch.rand(B, generator=g) < 0.5
    edges = [0.0, 30.0, 90.0, 180.0, 270.0, 365.0]
    idx = torch.from_numpy(bin_index(t.numpy(), ev.numpy(), edges))
    calendar_nll(m(**select_inputs(m, b)).logits, idx, ev).backward()
    for name in ("calendar_head.fc2.weight", "calendar_head.fc1.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    proj = m.before_prediction.proj.weight.grad
    assert proj is not None and float(proj.abs().sum()) > 0
    # the table is behind the zero projection: no gradient until the projection moves
    with torch.no_grad():
        nn.init.normal_(m.before_prediction.proj.weight, std=0.1)
    m.zero_grad()
    calendar_nll(m(**select_inputs(m, b)).logits, idx, ev).backward()
    table = m.before_prediction.table.weight.grad
    assert table is not None and float(table.abs().sum()) > 0


def test_new_parameters_train_with_the_head() -> None:
    m = _model("flat")
    for name, _ in m.named_parameters():
        if name.startswith(NEW):
            assert parameter_component(name) == "head", name
