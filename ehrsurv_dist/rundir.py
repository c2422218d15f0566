"""The layout of a run directory, in one place (every reader and writer takes names from here).

::

    RUN/
      config.yaml              resolved job config (with the launch command as a header)
      MODE                     pretrain | finetune: a run directory serves one mode
      vocab.json               the vocabulary fitted on the train split
      rejects.parquet          dropped subjects (calendar axis: samples) and the reason
      time_axis.json           calendar axis: the day-bin edges the run trains and predicts on
      metrics.json             per split metrics (+ "train" history)
      model/                   the exported best model, no pickle in it (train/modeling.py):
        model.safetensors        fp32 weights (LoRA adapters merged in)
        adapters.safetensors     LoRA runs only: the unmerged adapters
        config.json              model type and config, job model/task sections, vocabulary
                                 hash, mode, epoch, time axis
        vocab.json               a copy of the run's vocabulary
      predictions/predictions.parquet
      plots/*.png
      ray/                     Ray Train's storage (checkpoints of every epoch, resume state)
      tracking.json            train.tracking on: the backend, where it logs and the MLflow run
      mlruns/                  train.tracking=mlflow, default store: the MLflow file store
      tensorboard/             train.tracking=tensorboard, default log folder: event files
"""

from __future__ import annotations

import os

from ehrsurv_dist.schema import REJECTS_FILE, TIME_AXIS_FILE

CONFIG = "config.yaml"
MODE = "MODE"
VOCAB = "vocab.json"
REJECTS = REJECTS_FILE
METRICS = "metrics.json"
MODEL_DIR = "model"
EXPORT = MODEL_DIR  # the export is a folder: MODEL_* below name its files
MODEL_WEIGHTS = "model.safetensors"
MODEL_ADAPTERS = "adapters.safetensors"
MODEL_CONFIG = "config.json"
MODEL_VOCAB = "vocab.json"
# Before the model folder: one torch file (a pickle). Read only with torch's weights-only loader.
LEGACY_EXPORT = os.path.join("checkpoints", "best", "model.pt")
PREDICTIONS_DIR = "predictions"
PREDICTIONS = os.path.join(PREDICTIONS_DIR, "predictions.parquet")
PLOTS = "plots"
TIME_AXIS = TIME_AXIS_FILE
PREDICTIONS_TIME_AXIS = os.path.join(PREDICTIONS_DIR, TIME_AXIS_FILE)
RAY_DIR = "ray"
RUN_NAME = "train"  # Ray Train's run name: its checkpoints are under RUN/ray/train/
TRACKING = "tracking.json"  # train/tracking.py: which experiment run this run logs to
MLRUNS = "mlruns"  # default MLflow file store (train.tracking=mlflow)
TENSORBOARD = "tensorboard"  # default TensorBoard log folder (train.tracking=tensorboard)

# A new run's own files: removed again if the run fails before its first checkpoint.
RUN_FILES = (CONFIG, MODE, VOCAB, REJECTS, TIME_AXIS)


def path(run_dir: str, name: str) -> str:
    """``run_dir/name`` for a name of this module (``rundir.path(run, rundir.VOCAB)``)."""
    return os.path.join(run_dir, name)
