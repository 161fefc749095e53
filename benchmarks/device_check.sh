#!/usr/bin/env bash
# Issue 13's prepared GPU check: one command, <= 8 minutes on a bare H200 (PyTorch + CUDA, no network,
# only the working tree). Writes results.json, report.md, chunk_latency.png under $OUT (default
# ./device-check-out) and, on a GPU, benchmarks/results/<machine>/device_check/.
#   benchmarks/device_check.sh            # on the GPU machine
#   benchmarks/device_check.sh --dry-run  # same code, tiny preset, CPU, about a minute (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# A bare machine has torch but not this package installed: run from the source tree.
if ! "$PY" -c "import xvla.benchmarks" 2>/dev/null; then
  SRC="$(mktemp -d)"
  mkdir -p "$SRC/xvla"
  for pair in core:core runtime:runtime export:export agents:agents proto:proto benchmarks:benchmarks; do
    ln -s "$PWD/${pair%%:*}" "$SRC/xvla/${pair##*:}"
  done
  touch "$SRC/xvla/__init__.py"
  export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
fi
exec timeout "${DEVICE_CHECK_TIMEOUT:-470}" "$PY" -m xvla.benchmarks.device_check --out "${OUT:-device-check-out}" "$@"
