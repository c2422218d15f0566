"""A trained run from Python: ``load_model(RUN).predict(COHORT)`` (docs/python.md).

>>> from ehrsurv_dist import load_model
>>> m = load_model("runs/ft")                      # doctest: +SKIP
>>> preds = m.predict("cohort_new")                 # doctest: +SKIP  (a pyarrow.Table)
>>> curves = m.survival(preds)                      # doctest: +SKIP

:meth:`TrainedModel.predict` returns exactly the table ``ehrsurv predict`` writes (the same
function makes both: :func:`ehrsurv_dist.evaluate.predict_table`). A small cohort is scored in
this process without starting Ray; a large one (more than :data:`IN_PROCESS_MAX_BYTES` of
Parquet under ``COHORT/data/``) on Ray Data, as the CLI does. This module imports neither Ray nor
torch's model code until a model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import Override
from ehrsurv_dist.data import io
from ehrsurv_dist.errors import EhrsurvError

# ``use_ray=None`` scores in this process up to this many bytes of cohort Parquet files
# (``COHORT/data/**``), on Ray Data above it. In-process scoring reads the whole cohort into
# this process's memory (a few times the Parquet size once decoded).
IN_PROCESS_MAX_BYTES = 256 << 20


def cohort_bytes(cohort: str) -> int:
    """Total size in bytes of the Parquet files under ``COHORT/data/`` (local path or URI)."""
    fs, root = io.resolve(io.join(cohort, S.DATA_SUBDIR))
    files = [f for f in io.list_files(fs, root) if f.endswith(".parquet")]
    return sum(int(i.size or 0) for i in fs.get_file_info(files))


def choose_ray(cohort: str, use_ray: bool | None) -> bool:
    """``use_ray`` when given; None: Ray Data above :data:`IN_PROCESS_MAX_BYTES` of Parquet."""
    if use_ray is not None:
        return bool(use_ray)
    return cohort_bytes(cohort) > IN_PROCESS_MAX_BYTES


@dataclasses.dataclass
class TrainedModel:
    """A fine-tuned run, loaded: its resolved config, vocabulary and exported model.

    Attributes:
        run_dir: the run directory.
        spec: the run's resolved job config (``JobSpec``; overrides applied).
        time_axis: ``"visit"`` or ``"calendar"``.
        bin_edges_days: calendar axis: the day-bin edges ``[0, …, horizon]``; else None.
        vocab_size: ids in the run's vocabulary (special tokens included).
        num_parameters: parameters of the exported model.
        model: the exported model (``torch.nn.Module``, eval mode, on CPU).
    """

    run_dir: str
    spec: Any
    time_axis: str
    bin_edges_days: list[float] | None
    vocab_size: int
    num_parameters: int
    model: Any
    _vocab: Any = dataclasses.field(repr=False)
    _export: dict[str, Any] = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        axis = self.time_axis
        if self.bin_edges_days is not None:
            axis += f", {len(self.bin_edges_days) - 1} bins to {self.bin_edges_days[-1]:g} days"
        return (
            f"TrainedModel({self.run_dir!r}: {self.spec.model.arch} {self.spec.model.size}, "
            f"{axis}, vocab {self.vocab_size:,}, {self.num_parameters:,} parameters)"
        )

    def predict(
        self,
        cohort: str | os.PathLike[str],
        labels: str | os.PathLike[str] | None = None,
        *,
        use_ray: bool | None = None,
        as_pandas: bool = False,
    ) -> Any:
        """Predictions for every subject (calendar axis: every sample) of ``cohort``.

        Args:
            cohort: a MEDS cohort directory or URI; no outcome table is needed.
            labels: calendar-axis runs: a MEDS label file of ``cohort`` (the prediction times),
                as ``ehrsurv predict --labels``; default the run's rule or label path.
            use_ray: True: Ray Data batch inference (starts a local Ray if none is running,
                stops it after); False: in this process; None: in this process up to
                :data:`IN_PROCESS_MAX_BYTES` of cohort Parquet, else on Ray.
            as_pandas: return a ``pandas.DataFrame`` (needs pandas) instead.

        Returns:
            A ``pyarrow.Table`` with the columns, types, rows and order of the file
            ``ehrsurv predict`` writes (split ``all``). Visit axis: ``subject_id``, ``split``,
            ``event``, ``last_visit``, ``risk``, ``hazard``, ``survival`` (lists over visits
            0…last_visit); calendar axis: ``subject_id``, ``split``, ``prediction_time``,
            ``event``, ``time_days``, ``risk`` (1 − S(horizon)), ``hazard``, ``survival``
            (lists over the K bins, S at their right edges).
        """
        from ehrsurv_dist.evaluate import for_cohort, predict_table

        path = os.fspath(cohort)
        lab = os.fspath(labels) if labels is not None else None
        spec = for_cohort(self.spec, path, labels=lab, run_dir=self.run_dir)
        on_ray = choose_ray(path, use_ray)
        table, _ = predict_table(
            self.run_dir,
            spec,
            self._vocab,
            self._export,
            use_ray=on_ray,
            model=None if on_ray else self.model,
        )
        if as_pandas:
            return table.to_pandas()
        return table

    def survival(
        self,
        predictions: Any,
        labels: str | os.PathLike[str] | None = None,
        *,
        use_ray: bool | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Survival curves, one ``(x, S)`` pair of float64 arrays per prediction row, in order.

        Calendar axis: ``x`` are the bin edges in days ``[0, e_1, …, horizon]`` and ``S`` the
        survival at them, starting with S(0) = 1 (K + 1 points). Visit axis: ``x`` are the visit
        indices ``0 … last_visit`` and ``S[t]`` the probability of no event through visit t.

        Args:
            predictions: what :meth:`predict` returned (a ``pyarrow.Table`` or a pandas
                DataFrame), or a cohort to predict first (``labels`` and ``use_ray`` as there).
        """
        if isinstance(predictions, str | os.PathLike):
            predictions = self.predict(predictions, labels, use_ray=use_ray)
        if not isinstance(predictions, pa.Table):
            if not hasattr(predictions, "columns"):
                raise EhrsurvError(
                    "survival() takes predict()'s table (pyarrow or pandas) or a cohort path, "
                    f"got {type(predictions).__name__}"
                )
            predictions = pa.Table.from_pandas(predictions, preserve_index=False)
        if "survival" not in predictions.column_names:
            raise EhrsurvError("survival(): the predictions table has no 'survival' column")
        rows = predictions.column("survival").to_pylist()
        if self.bin_edges_days is not None:
            edges = np.asarray(self.bin_edges_days, np.float64)
            k = len(edges) - 1
            out = []
            for i, s in enumerate(rows):
                if s is None or len(s) != k:
                    raise EhrsurvError(
                        f"survival(): row {i} has {0 if s is None else len(s)} survival values; "
                        f"this run has {k} bins (is the table another run's?)"
                    )
                out.append((edges, np.concatenate([[1.0], np.asarray(s, np.float64)])))
            return out
        return [(np.arange(len(s), dtype=np.float64), np.asarray(s, np.float64)) for s in rows]


def load_model(run_dir: str | os.PathLike[str], overrides: Sequence[Override] = ()) -> TrainedModel:
    """Load a finished ``finetune`` run for prediction in this process.

    Args:
        run_dir: the run directory ``ehrsurv finetune --out`` wrote.
        overrides: ``KEY=VALUE`` overrides of how it is scored (``eval.actors=2``,
            ``train.use_gpu=false``, data-loading knobs), as ``ehrsurv predict`` takes them;
            keys the trained model depends on are refused (``ConfigError``).

    Raises:
        EhrsurvError: not a run directory, not a finetune run, or its vocabulary does not match
            its model.
    """
    from ehrsurv_dist import task as T
    from ehrsurv_dist.evaluate import load_run
    from ehrsurv_dist.train import modeling

    path = os.fspath(run_dir)
    spec, vocab, export = load_run(path, overrides)
    model = modeling.model_from_export(export)
    edges = T.edges_of(spec)
    return TrainedModel(
        run_dir=path,
        spec=spec,
        time_axis=spec.task.axis,
        bin_edges_days=[float(x) for x in edges] if edges is not None else None,
        vocab_size=int(vocab.size),
        num_parameters=int(sum(p.numel() for p in model.parameters())),
        model=model,
        _vocab=vocab,
        _export=export,
    )
