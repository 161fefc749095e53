#!/usr/bin/env bash
# Builds the environment that runs the OFFICIAL DexVLA code (LeRobot @ a0510c0f5,
# lerobot/common/policies/dexvla/) for `python -m xvla.benchmarks.dexvla_official`. Nothing here runs
# in the test suite; everything is created outside the repository.
#
#   benchmarks/official/setup_dexvla_env.sh VENV_DIR CODE_DIR GIT_DIR
#
#   VENV_DIR  new virtual environment (Python 3.11), e.g. /work/venv-dexvla-official
#   CODE_DIR  where the official `lerobot/` tree at a0510c0f5 is written, e.g. /work/dexvla-official
#   GIT_DIR   a git directory (clone or bare mirror) of huggingface/lerobot holding a0510c0f5
#
# Versions = the conformance goldens' (shared/conformance/dexvla/meta.json "versions"): torch 2.13.0+cpu,
# transformers 4.49.0, diffusers 0.32.2, timm 0.9.10, qwen_vl_utils 0.0.10, tokenizers 0.21.4, numpy 2.2.6,
# pillow 13.0.0, safetensors 0.8.0, draccus 0.11.6 (+ datasets, jsonlines, imageio for lerobot's imports),
# torchvision 0.28.0 without deps (its CUDA-linked _C does not load against torch 2.13.0+cpu; the timing
# script defines the torchvision::nms/qnms op schemas before importing, as the conformance harness did;
# no torchvision op runs). The source patches are the conformance run's (patch_dexvla.py).
set -euo pipefail

VENV=${1:?usage: setup_dexvla_env.sh VENV_DIR CODE_DIR GIT_DIR}
CODE=${2:?usage: setup_dexvla_env.sh VENV_DIR CODE_DIR GIT_DIR}
GIT_DIR=${3:?usage: setup_dexvla_env.sh VENV_DIR CODE_DIR GIT_DIR}
COMMIT=a0510c0f5
PYTHON=${PYTHON:-python3.11}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ ! -d "$CODE/lerobot/common/policies/dexvla" ]; then
    mkdir -p "$CODE"
    git --git-dir "$GIT_DIR" archive "$COMMIT" lerobot pyproject.toml LICENSE | tar -x -C "$CODE"
fi
"$PYTHON" "$HERE/patch_dexvla.py" "$CODE"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "torch==2.13.0" "transformers==4.49.0" "diffusers==0.32.2" "timm==0.9.10" \
    "qwen_vl_utils==0.0.10" "tokenizers==0.21.4" "numpy==2.2.6" "pillow==13.0.0" "safetensors==0.8.0" \
    "draccus==0.11.6" datasets jsonlines imageio
"$VENV/bin/pip" install --quiet --no-deps "torchvision==0.28.0"
"$VENV/bin/python" -c "import torch, transformers, diffusers; print('official dexvla venv:', torch.__version__, transformers.__version__, diffusers.__version__)"
