#!/usr/bin/env bash
# The quick-start demo: a synthetic MEDS cohort with known hazards, then the validator's report.
# Later stages (pretrain -> fine-tune -> evaluate on an in-process Ray) join here as they land.
set -euo pipefail
OUT="${1:-demo_out}"
rm -rf "$OUT/cohort"
mkdir -p "$OUT"
echo "== 1/2 synthetic cohort (local preset, signal 3) -> $OUT/cohort"
ehrsurv synth --preset local --signal 3 --seed 42 --out "$OUT/cohort"
echo
echo "== 2/2 validate the cohort"
ehrsurv validate "$OUT/cohort"
