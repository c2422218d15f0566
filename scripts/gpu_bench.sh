#!/usr/bin/env bash
# bf16 DeepSpeed training throughput of the medium and large BEHRT presets on one GPU.
#
#   scripts/gpu_bench.sh [OUT_DIR]            # default OUT_DIR: gpu_bench_out
#
# On a bare machine with an NVIDIA GPU and python3.11: makes a virtualenv, installs a CUDA build
# of torch and the project, then runs `python -m ehrsurv_dist.bench.gpu` (tokens/s, model FLOPs
# utilisation with FLOPs/token = 6·N + 12·n_layers·L·d, peak memory; see that module's doc),
# writing OUT_DIR/bench.json and OUT_DIR/SUMMARY.md. Budget: under 8 minutes with a warm pip cache
# or a wheelhouse (the torch CUDA wheel is ~1 GB to download; the benchmark itself ~1-2 minutes).
#
# Environment (all optional):
#   PYTHON        interpreter for the virtualenv            (default: python3.11, else python3)
#   VENV          virtualenv directory                      (default: .venv-gpu)
#   TORCH_SPEC    torch requirement                         (default: torch==2.13.0)
#   TORCH_INDEX   wheel index of the CUDA build             (default: https://download.pytorch.org/whl/cu128)
#   WHEELHOUSE    a directory of wheels: install offline from it (no index at all)
#   SKIP_INSTALL  1 = use VENV as it is
#   BENCH_ARGS    extra arguments for the Python part, e.g. "--batch 64 --seq-len 512 --steps 50"
#   TIME_LIMIT    seconds the benchmark may run             (default: 420)
set -euo pipefail

OUT=${1:-gpu_bench_out}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv-gpu}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
TIME_LIMIT=${TIME_LIMIT:-420}
T0=$SECONDS

say() { printf '[gpu_bench %3ds] %s\n' "$((SECONDS - T0))" "$*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no NVIDIA GPU here (nvidia-smi missing or sees no device): nothing to benchmark."
    say "The Python part runs on a CPU for checking: python -m ehrsurv_dist.bench.gpu --device cpu --sizes tiny --out OUT"
    exit 2
fi
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
    [[ -d "$VENV" ]] || { say "virtualenv $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [[ -n "${WHEELHOUSE:-}" ]]; then
        say "installing from the wheelhouse $WHEELHOUSE (offline)"
        "${PIP[@]}" --no-index --find-links "$WHEELHOUSE" "$TORCH_SPEC"
        "${PIP[@]}" --no-index --find-links "$WHEELHOUSE" -e .
    else
        say "installing $TORCH_SPEC from $TORCH_INDEX"
        # torch first and explicitly: a bare range would let pip pick another build (engine-notes.md)
        "${PIP[@]}" --index-url "$TORCH_INDEX" "$TORCH_SPEC"
        say "installing the project (DeepSpeed, Ray, ...)"
        "${PIP[@]}" -e .
    fi
fi
PY="$VENV/bin/python"
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device (a CPU wheel?)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}")
EOF

say "benchmark: medium and large presets, bf16, DeepSpeed ZeRO-1 (limit ${TIME_LIMIT}s)"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words on purpose
timeout "$TIME_LIMIT" "$PY" -m ehrsurv_dist.bench.gpu --out "$OUT" --sizes medium large ${BENCH_ARGS:-}
say "done: $OUT/bench.json, $OUT/SUMMARY.md"
