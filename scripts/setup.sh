#!/usr/bin/env bash
# Creates ./.venv with everything needed to export, serve, run the agent, benchmark and test.
# Idempotent: a second run only checks. Torch is pinned to the CPU wheel (torch==2.13.0):
# an unpinned torch would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xvla-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[export,serve,agent,bench,dev]"
  rm -f .venv/.xvla-setup-*
  touch "$stamp"
fi
# The openpi-client package pins numpy<2: the BEHAVIOR harness runs it in its own
# environment, and so do our bridge tests.
if [ ! -x .venv-openpi/bin/python ]; then
  "$PY" -m venv .venv-openpi
  .venv-openpi/bin/python -m pip install -q --upgrade pip
  .venv-openpi/bin/python -m pip install -q openpi-client typing_extensions
fi
