#!/usr/bin/env bash
# The quick-start demo, end to end on an in-process Ray with 2 CPU workers (DeepSpeed ZeRO-1):
# synthetic MEDS cohort -> validate -> pretrain (MLM + NVP) -> fine-tune (LoRA, hybrid loss,
# initialised from the pretrained encoder) -> evaluate, then the metrics next to the oracle;
# then a MEDS task on the calendar axis (death within two years of each prediction time in a
# MEDS label file), its metrics in days next to the generator's oracle.
set -euo pipefail
OUT="${1:-demo_out}"
rm -rf "$OUT"
mkdir -p "$OUT"
COMMON=(model.size=tiny data.batch_size=16 data.max_seq_len=128 train.num_workers=2
        train.engine.zero_stage=1 train.engine.lr=0.001 train.engine.warmup_ratio=0.1)
start=$(date +%s)
echo "== 1/7 synthetic cohort (smoke preset, signal 3) -> $OUT/cohort"
ehrsurv synth --preset smoke --signal 3 --seed 42 --out "$OUT/cohort" --quiet
echo
echo "== 2/7 validate"
ehrsurv validate "$OUT/cohort"
echo
echo "== 3/7 pretrain (MLM + NVP, 2 epochs)"
ehrsurv pretrain --cohort "$OUT/cohort" --out "$OUT/pretrain" "${COMMON[@]}" \
  pretrain.objective=joint train.epochs=2
echo
echo "== 4/7 fine-tune (LoRA r=16, hybrid loss) from the pretrained encoder, then evaluate"
ehrsurv finetune --cohort "$OUT/cohort" --out "$OUT/finetune" --init "$OUT/pretrain" \
  "${COMMON[@]}" finetune.strategy=lora finetune.train_embeddings=true finetune.loss=hybrid \
  finetune.lambda_rank=0.05 train.epochs=4 train.patience=2 eval.n_boot=100
echo
echo "== 5/7 results (held_out) next to the generator's oracle"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
m = json.load(open(f"{out}/finetune/metrics.json"))["held_out"]
o = json.load(open(f"{out}/cohort/synth_report.json"))["oracle_held_out"]
row = "{:<34s} {:>8s} {:>10s} {:>8s}"
print(row.format("held_out", "td-C", "Harrell C", "IBS"))
f = lambda x: "n/a" if x is None else f"{x:.4f}"
print(row.format("BEHRT tiny, LoRA, hybrid (this run)", f(m["c_index_td"]), f(m["c_index_harrell"]), f(m["ibs"])))
for k, name in (("hazard_observable", "oracle: observable hazard (fair)"), ("hazard", "oracle: true hazard (w/ frailty)")):
    print(row.format(name, f(o[k]["c_index_td"]), f(o[k]["c_index_harrell"]), f(o[k].get("ibs"))))
print(f"n={m['n_subjects']} subjects, {m['n_events']} events; run dirs: {out}/pretrain, {out}/finetune")
PY
echo
echo "== 6/7 calendar-axis cohort: visits in days, a label file labels/death.parquet -> $OUT/cohort_cal"
ehrsurv synth --axis calendar --subjects 3000 --seed 42 --out "$OUT/cohort_cal" --quiet
echo
echo "== 7/7 fine-tune jobs/finetune_calendar.yaml: death within 730 days of each prediction time"
ehrsurv finetune --config jobs/finetune_calendar.yaml --cohort "$OUT/cohort_cal" \
  --out "$OUT/calendar" eval.n_boot=100
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
m = json.load(open(f"{out}/calendar/metrics.json"))["held_out"]
edges = json.load(open(f"{out}/calendar/time_axis.json"))["edges"]
f = lambda x: "n/a" if x is None else f"{x:.4f}"
print(f"held_out, death within {edges[-1]:g} days; {len(edges) - 1} day bins, edges {[round(e) for e in edges]}")
row = "{:<36s} {:>8s} {:>17s} {:>9s} {:>8s} {:>8s}"
print(row.format("", "td-C", "95% CI", "Harrell", "IBS", "ECE"))
ci = m["ci"]["c_index_td"]
print(row.format("BEHRT tiny, calendar head (this run)", f(m["c_index_td"]), f"[{f(ci[0])}, {f(ci[1])}]",
                 f(m["c_index_harrell"]), f(m["ibs"]), f(m["calibration"]["ece"])))
for k, name in (("observable", "oracle: observable rate (fair)"), ("frailty", "oracle: true rate (w/ frailty)")):
    o = m["oracle"][k]
    c = o["c_index_td_ci"]
    print(row.format(name, f(o["c_index_td"]), f"[{f(c[0])}, {f(c[1])}]", f(o["c_index_harrell"]), f(o["ibs"]), f(o["ece"])))
print("Brier / td-AUC at " + ", ".join(f"{d} days: {f(b)} / {f(m['td_auc'].get(d))}" for d, b in m["brier"].items()))
print(f"n={m['n_samples']} samples of {m['n_subjects']} subjects, {m['n_events']} deaths within the horizon; "
      f"predictions: {out}/calendar/predictions/ (predictions.parquet, meds_eval.parquet, time_axis.json)")
PY
echo "demo finished in $(( $(date +%s) - start )) s"
