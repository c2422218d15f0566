"""Calendar-axis pieces shared by the three survival models (``num_bins = K > 0``).

On the calendar axis (the calendar-axis contract, docs/design.md) a sample is (subject,
prediction time), its input is the history up to the prediction time, and the model gives K
hazard logits, one per day bin. Each model then

1. embeds the days between each token / visit and the prediction time
   (:func:`days_before_prediction`, :class:`TimeBeforePrediction`) and adds it beside the age
   embedding, so that the gaps between visits and the prediction time are visible;
2. takes the state of the last real visit (the same visit aggregation / pooling as on the visit
   axis; :func:`last_visit_state`) as the representation at the prediction time;
3. maps it to K logits with :class:`CalendarHead` and returns :func:`calendar_output`.

:class:`TimeBeforePrediction` ends in a zero-initialised projection, so a pretrained encoder's
states are unchanged at initialisation. Neither module's parameter names contain "embedding":
:func:`~ehrsurv_dist.models.lora.parameter_component` counts them as ``head`` (new, trained with
the head under the frozen and LoRA strategies).

Shape vocabulary: ``B`` batch, ``N`` positions (tokens L or visit slots V), ``D`` width, ``K``
bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.hazards import last_real_visit
from ehrsurv_dist.outputs import SurvivalOutput
from ehrsurv_dist.schema import PREDICTION_AGE
from ehrsurv_dist.tensors import check_tensor

DAYS_PER_YEAR = 365.25


def check_prediction_age(prediction_age: Tensor | None, batch_size: int, num_bins: int) -> Tensor:
    """``prediction_age`` float [B], required exactly when ``num_bins > 0``.

    Raises:
        ValueError: if it is missing with ``num_bins > 0``, given with ``num_bins == 0``, or has
            the wrong rank, dtype or length.
    """
    if num_bins == 0:
        if prediction_age is not None:
            raise ValueError(f"{PREDICTION_AGE} is only read on the calendar axis (num_bins > 0)")
        raise ValueError("check_prediction_age is for num_bins > 0")
    if prediction_age is None:
        raise ValueError(f"{PREDICTION_AGE} is required with num_bins={num_bins} > 0")
    check_tensor(prediction_age, PREDICTION_AGE, ndim=1, floating=True)
    if prediction_age.shape[0] != batch_size:
        raise ValueError(
            f"{PREDICTION_AGE} has {prediction_age.shape[0]} entries, expected B={batch_size}"
        )
    return prediction_age


def days_before_prediction(prediction_age: Tensor, ages: Tensor, mask: Tensor) -> Tensor:
    """Days between each position and the prediction time.

    ``(prediction_age[:, None] - ages) * 365.25``, clamped to >= 0 (a rounding error, never a
    future record), 0 where ``mask`` is False. Computed in float64 (ages ~ 80 years in float32
    would lose days), returned in float32.

    Args:
        prediction_age: float [B], years.
        ages: float [B, N], years at each token / visit.
        mask: bool [B, N], True = real position.

    Returns:
        float32 [B, N].
    """
    days = (prediction_age.double()[:, None] - ages.double()) * DAYS_PER_YEAR
    return days.clamp(min=0.0).masked_fill(~mask, 0.0).float()


class TimeBeforePrediction(nn.Module):
    """Embedding of days before the prediction time on a log scale, zero at initialisation.

    ``bucket = min(floor(log1p(days) / bin_width), n - 1)`` (``bin_width`` 0.25 in log-days:
    bins of ~28 % relative width; the last bin starts at ``expm1(max_log_days)`` ~ 445 years), then
    ``proj(table[bucket])`` with ``proj`` zero-initialised, times the mask.
    """

    def __init__(self, dim: int, bin_width: float = 0.25, max_log_days: float = 13.0) -> None:
        super().__init__()
        self.bin_width = float(bin_width)
        self.num_buckets = int(math.floor(max_log_days / bin_width)) + 1
        self.table = nn.Embedding(self.num_buckets, dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def bucket(self, days: Tensor) -> Tensor:
        """int64, same shape as ``days``."""
        b = torch.floor(torch.log1p(days.float().clamp(min=0.0)) / self.bin_width)
        return b.long().clamp(max=self.num_buckets - 1)

    def forward(self, days: Tensor, mask: Tensor) -> Tensor:
        """Args: days float [B, N]; mask bool [B, N]. Returns: [B, N, D], 0 where mask is False."""
        x = self.proj(self.table(self.bucket(days)))
        return x * mask[..., None].to(x.dtype)


class CalendarHead(nn.Module):
    """``Linear -> LayerNorm -> GELU -> Dropout -> Linear(K)``: K hazard logits per sample.

    The same layers as :class:`~ehrsurv_dist.models.heads.HazardHead`, with K outputs.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_bins: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, num_bins)

    def forward(self, state: Tensor) -> Tensor:
        """Args: state [B, D]. Returns: logits [B, K], at least float32 (as HazardHead)."""
        logits = self.fc2(self.dropout(F.gelu(self.norm(self.fc1(state)))))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits


def attach_calendar_head(
    model: nn.Module,
    *,
    time_dim: int,
    in_dim: int,
    head_dim: int,
    num_bins: int,
    dropout: float,
    fields: tuple[str, ...] = (PREDICTION_AGE,),
) -> None:
    """Give a survival model its calendar-axis parts (``num_bins > 0``): the extra input
    ``fields``, the time-before-prediction embedding (width ``time_dim``) and the K-bin head
    (``in_dim`` → ``head_dim`` → ``num_bins``), initialised as the visit-axis head is."""
    from ehrsurv_dist.models.behrt import init_weights

    model.input_fields = (*type(model).input_fields, *fields)  # type: ignore[assignment,attr-defined]
    model.before_prediction = TimeBeforePrediction(time_dim)
    model.calendar_head = CalendarHead(in_dim, head_dim, num_bins, dropout)
    model.calendar_head.apply(init_weights)


@torch.no_grad()
def init_hazard_bias(model: nn.Module, logit: float) -> bool:
    """Start every bin's hazard at ``sigmoid(logit)`` (the output bias of the calendar head).

    A head whose bias is 0 starts at a hazard of 0.5 per bin, far above any real cohort's
    (a few percent), and spends its first epochs only learning the base rate; starting at the
    train split's average hazard per bin removes that phase. Returns False when ``model`` has
    no calendar head (visit axis).
    """
    head = getattr(getattr(model, "module", model), "calendar_head", None)
    if not isinstance(head, CalendarHead):
        return False
    head.fc2.bias.fill_(float(logit))
    return True


def base_hazard_logit(n_samples: int, n_events: int, num_bins: int) -> float:
    """logit of the per-bin hazard that gives ``n_events / n_samples`` events by the horizon
    when every bin has the same hazard: ``h = 1 − (1 − p)^(1/K)``, clipped to [1e-4, 0.5]."""
    p = min(max(n_events / max(n_samples, 1), 1e-4), 0.999)
    h = min(max(1.0 - (1.0 - p) ** (1.0 / max(num_bins, 1)), 1e-4), 0.5)
    return math.log(h / (1.0 - h))


def last_visit_index(visit_mask: Tensor) -> Tensor:
    """int64 [B]: the last real visit slot, 0 for a sample without one (its state is 0)."""
    return last_real_visit(visit_mask).clamp(min=0)


def last_visit_state(visits: Tensor, visit_mask: Tensor) -> Tensor:
    """The state at the prediction time: ``visits[b, last real visit of b]``.

    Args:
        visits: float [B, V, D].
        visit_mask: bool [B, V].

    Returns:
        [B, D].
    """
    idx = last_visit_index(visit_mask)  # [B]
    return visits.gather(1, idx[:, None, None].expand(-1, 1, visits.shape[-1]))[:, 0]


def calendar_output(logits: Tensor, visit_embeddings: Tensor | None = None) -> SurvivalOutput:
    """:class:`SurvivalOutput` of K bin logits with an all-True mask [B, K].

    ``visit_embeddings`` (when given) are the visit states [B, V, D] the head read the last of.
    """
    mask = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    return SurvivalOutput(logits=logits, visit_mask=mask, visit_embeddings=visit_embeddings)
