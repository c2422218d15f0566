"""Single source of truth for column names, special token ids and batch field names.

Everything that crosses a module boundary by name (Parquet columns, batch dict keys, vocabulary
special tokens) is defined here, so that a rename happens in one place.

Shape vocabulary: ``B`` batch, ``L`` flattened tokens, ``V`` visits, ``C`` codes per visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import meds
import numpy as np

# --- MEDS input (docs/design.md §1); names come from the MEDS standard's own package -------------
SUBJECT_ID = "subject_id"
TIME = "time"
CODE = "code"
NUMERIC_VALUE = "numeric_value"
TEXT_VALUE = "text_value"
BIRTH_CODE: str = meds.birth_code  # "MEDS_BIRTH": sets the age, never an input token
DEATH_CODE: str = meds.death_code  # "MEDS_DEATH": an outcome, never an input token
NON_INPUT_CODES: frozenset[str] = frozenset({BIRTH_CODE, DEATH_CODE})

DATA_SUBDIR: str = meds.data_subdirectory  # "data"
SUBJECT_SPLITS_PATH: str = meds.subject_splits_filepath  # "metadata/subject_splits.parquet"
CODE_METADATA_PATH: str = meds.code_metadata_filepath  # "metadata/codes.parquet"
DATASET_METADATA_PATH: str = meds.dataset_metadata_filepath  # "metadata/dataset.json"
SPLIT = "split"
TRAIN_SPLIT: str = meds.train_split
TUNING_SPLIT: str = meds.tuning_split
HELD_OUT_SPLIT: str = meds.held_out_split
SPLITS: tuple[str, str, str] = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)

# --- Outcome table: COHORT/outcomes.parquet ---------------------------------------------------
OUTCOMES_FILE = "outcomes.parquet"
OUTCOME_EVENT = "event"  # bool: True = event observed, False = censored
OUTCOME_TIME = "time"  # timestamp[us]: event time, or end of follow-up

# --- Synthetic ground truth: COHORT/truth.parquet (docs/design.md §5) ----------------------------
TRUTH_FILE = "truth.parquet"
TRUTH_HAZARD = "hazard"  # list<float32>, length T + 1, frailty included
TRUTH_HAZARD_OBSERVABLE = "hazard_observable"  # same with frailty set to 0

# --- Calendar-time tasks (docs/design.md §7): MEDS label files and the per-sample labels ------------
# MEDS label files (``meds.LabelSchema``): one row per (subject, prediction time); value columns
# (``boolean_value`` ...) are optional and not read as outcomes.
PREDICTION_TIME: str = meds.LabelSchema.prediction_time_name  # "prediction_time", timestamp[us]
TIME_DAYS = "time_days"  # float64: days from the prediction time to the event or censoring
PREDICTION_AGE = "prediction_age"  # float32: age in years at the prediction time
BIN = "bin"  # int64: 0-based index of the day bin of ``time_days`` (the loss's time index)
AXES: tuple[str, str] = ("visit", "calendar")
TIME_AXIS_FILE = "time_axis.json"  # predictions/time_axis.json
MEDS_EVAL_FILE = "meds_eval.parquet"  # predictions/meds_eval.parquet (MEDS-evaluation form)

# --- Rejects (subjects dropped with a reason) --------------------------------------------------
REJECTS_FILE = "rejects.parquet"
REJECT_REASON = "reason"

# --- Vocabulary special tokens ------------------------------------------------------------------
# Fixed ids at the bottom of the table (the seed put MASK at vocab_size - 1; a fixed id keeps the
# MASK token stable when the vocabulary grows, see docs/design.md).
PAD_ID = 0
MASK_ID = 1
UNK_ID = 2
NUM_SPECIAL_TOKENS = 3
SPECIAL_TOKENS: tuple[str, str, str] = ("[PAD]", "[MASK]", "[UNK]")
IGNORE_INDEX = -100  # label value ignored by token-level losses (MLM)

# Scalar risk scores from a hazard sequence (docs/design.md §4); one name, `risk_score`, from the job
# file (`finetune.risk_score`) through the loss and the metrics.
RISK_SCORES: tuple[str, str, str] = ("mean_hazard", "horizon", "first_n")


# --- Batch fields -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """Name, numpy dtype and symbolic shape of one batch field."""

    name: str
    dtype: type[np.generic]
    shape: str
    doc: str


SUBJECT = "subject_id"
CODES = "codes"
AGES = "ages"
VISIT_IDS = "visit_ids"
ATTENTION_MASK = "attention_mask"
LAST_VISIT = "last_visit"
EVENT = "event"
NUM_VISITS = "num_visits"
TIME_DELTAS = "time_deltas"
CODE_MASK = "code_mask"
VISIT_MASK = "visit_mask"
MLM_LABELS = "mlm_labels"

# Extra per-sample fields of a calendar-axis batch (besides LABEL_FIELDS; absent on the visit
# axis). ``LAST_VISIT`` stays the index of the last input visit (the prediction-time visit).
CALENDAR_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(PREDICTION_TIME, np.int64, "[B]", "prediction time, µs since the epoch"),
    FieldSpec(
        TIME_DAYS, np.float64, "[B]", "days to the event or censoring, capped at the horizon"
    ),
    FieldSpec(PREDICTION_AGE, np.float32, "[B]", "age in years at the prediction time"),
    FieldSpec(BIN, np.int64, "[B]", "day bin of time_days: the loss's time index"),
)

LABEL_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(SUBJECT, np.int64, "[B]", "MEDS subject_id"),
    FieldSpec(LAST_VISIT, np.int64, "[B]", "T: index of the last input visit (after truncation)"),
    FieldSpec(EVENT, np.bool_, "[B]", "True = event in the interval after visit T"),
    FieldSpec(NUM_VISITS, np.int64, "[B]", "T + 1: number of input visits (after truncation)"),
)

FLAT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(CODES, np.int64, "[B, L]", "code id per token; PAD_ID on padding"),
    FieldSpec(AGES, np.float32, "[B, L]", "age in years at the token's visit; 0 on padding"),
    FieldSpec(VISIT_IDS, np.int64, "[B, L]", "0-based visit index of the token; 0 on padding"),
    FieldSpec(ATTENTION_MASK, np.bool_, "[B, L]", "True = real token (the only validity source)"),
    *LABEL_FIELDS,
)

HIERARCHICAL_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(CODES, np.int64, "[B, V, C]", "code ids per visit slot; PAD_ID on padding"),
    FieldSpec(AGES, np.float32, "[B, V]", "age in years at the visit"),
    FieldSpec(TIME_DELTAS, np.float32, "[B, V]", "days since the previous visit; 0 for the first"),
    FieldSpec(CODE_MASK, np.bool_, "[B, V, C]", "True = real code"),
    FieldSpec(VISIT_MASK, np.bool_, "[B, V]", "True = real visit slot"),
    *LABEL_FIELDS,
)
