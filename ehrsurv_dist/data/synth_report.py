"""Ground-truth report of a synthetic cohort: what the best possible model would score.

The oracle scores use the generator's own per-visit hazards on the held-out split:
``hazard`` (frailty included: unreachable, since frailty is not in the data) and
``hazard_observable`` (frailty set to 0: what codes and ages determine, the fair ceiling).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from ehrsurv_dist import atomic
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist.data.meds import data_files, read_outcomes
from ehrsurv_dist.data.splits import subject_splits


def _csr(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flat float64 values, int64 offsets [N + 1]) of a list<float> column."""
    arr = col.combine_chunks()
    off = np.asarray(arr.offsets, dtype=np.int64)
    vals = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return vals[off[0] : off[-1]], off - off[0]


def synth_report(cohort: str) -> dict[str, Any]:
    """Compute the ground-truth report of ``cohort`` (written by ``ehrsurv synth``)."""
    truth = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    outc = read_outcomes(os.path.join(cohort, S.OUTCOMES_FILE))
    sid = np.asarray(truth[S.SUBJECT_ID].to_numpy())
    o_sid = np.asarray(outc[S.SUBJECT_ID].to_numpy())
    order = np.argsort(o_sid)
    pos = order[np.searchsorted(o_sid[order], sid)]
    event = np.asarray(outc[S.OUTCOME_EVENT].to_numpy(zero_copy_only=False))[pos].astype(bool)
    haz = _csr(truth[S.TRUTH_HAZARD])
    haz_obs = _csr(truth[S.TRUTH_HAZARD_OBSERVABLE])
    T = np.diff(haz[1]) - 1
    n_visits = T + 1

    fs, files, _ = data_files(cohort)
    codes: set[str] = set()
    for f in files:
        with fs.open_input_file(f) as fh:
            c = pq.read_table(fh, columns=[S.CODE])[S.CODE]
        codes |= set(pc.unique(c).to_pylist())
    codes -= set(S.NON_INPUT_CODES)
    codes = {c for c in codes if c is not None}

    true_risk = M.risk_scores(M.hazard_table_from_csr(*haz), risk_score="mean_hazard")
    rho_all = float(spearmanr(true_risk, T).statistic)
    rho_ev = (
        float(spearmanr(true_risk[event], T[event]).statistic) if event.sum() > 2 else float("nan")
    )

    split = subject_splits(cohort, sid)
    train = split == S.TRAIN_SPLIT
    held = split == S.HELD_OUT_SPLIT
    oracle: dict[str, Any] = {}
    for name, hz in (("hazard", haz), ("hazard_observable", haz_obs)):
        h_held = M.hazard_table_from_csr(*hz).take(np.flatnonzero(held))
        risk = M.risk_scores(h_held, risk_score="mean_hazard")
        try:  # the IBS a perfectly calibrated model would get (train censoring, default grid)
            ibs = float(M.integrated_brier(h_held, None, event[held], T[train], event[train]))
        except ValueError:  # e.g. no event in a tiny held-out split
            ibs = float("nan")
        oracle[name] = {
            "c_index_td": float(M.concordance_td(h_held, T[held], event[held])),
            "c_index_harrell": float(M.harrell_c(risk, T[held], event[held])),
            "ibs": ibs,
            "risk_score": "mean_hazard",
        }
    return {
        "cohort": cohort,
        "subjects": int(len(sid)),
        "events": int(event.sum()),
        "event_rate": float(event.mean()),
        "visits_mean": float(n_visits.mean()),
        "visits_median": float(np.median(n_visits)),
        "visits_max": int(n_visits.max()),
        "codes": len(codes),
        "spearman_true_risk_vs_time": rho_all,
        "spearman_true_risk_vs_time_events": rho_ev,
        "split_sizes": {s: int((split == s).sum()) for s in S.SPLITS},
        "held_out_events": int(event[held].sum()),
        "train_subjects": int(train.sum()),
        "oracle_held_out": oracle,
    }


def format_synth_report(r: dict[str, Any]) -> str:
    o = r["oracle_held_out"]
    lines = [
        f"synthetic cohort {r['cohort']}",
        f"  subjects {r['subjects']:,}  events {r['events']:,}  event rate {r['event_rate']:.3f}",
        f"  visits per subject: mean {r['visits_mean']:.2f}  median {r['visits_median']:.1f}"
        f"  max {r['visits_max']}   distinct codes {r['codes']}",
        f"  Spearman r(true risk, time) {r['spearman_true_risk_vs_time']:+.3f} (all), "
        f"{r['spearman_true_risk_vs_time_events']:+.3f} (events)   seed target -0.4 to -0.6",
        f"  splits {r['split_sizes']}",
        "  oracle on held_out             td-C    Harrell C (mean_hazard)   IBS",
        *(
            f"    {label:<26s}{o[k]['c_index_td']:.4f}   {o[k]['c_index_harrell']:.4f}"
            f"                    {o[k].get('ibs', float('nan')):.4f}"
            for k, label in (
                ("hazard", "hazard (with frailty)"),
                ("hazard_observable", "hazard_observable (fair)"),
            )
        ),
    ]
    return "\n".join(lines)


def write_synth_report(cohort: str) -> dict[str, Any]:
    r = synth_report(cohort)
    atomic.write_json(r, os.path.join(cohort, "synth_report.json"))
    return r
