#!/usr/bin/env bash
# Builds the environment that runs the OFFICIAL X-VLA server (its deploy.py FastAPI /act), for
# the side-by-side benchmark `python -m xvla.benchmarks.official_server`. Nothing here runs in
# the test suite; everything is created outside the repository.
#
#   benchmarks/official/setup_official_env.sh VENV_DIR CODE_DIR [SOURCE]
#
#   VENV_DIR  new virtual environment (Python 3.11), e.g. /work/venv-official
#   CODE_DIR  the official code at commit 2c4fedf, e.g. /work/xvla-official
#   SOURCE    a git URL or a local clone that holds commit 2c4fedf
#             (default https://github.com/xunushan/X-VLA.git, whose root commit it is; its
#             models/*.py are byte-identical to 2toinf/X-VLA main, checked below by sha256)
#
# The environment is the one of the conformance goldens (shared/conformance/xvla/README.md §1):
# Python 3.11, torch 2.13.0+cpu, transformers 4.51.3 (the official pin is <=4.51.3; >=4.54 cannot
# build the model), safetensors, numpy, einops, timm, fastapi + uvicorn + json_numpy for the server.
# The PyPI torchvision wheel does not load against torch 2.13, and `import timm` needs it, so
# torchvision is replaced by an import-only stub (benchmarks/official/torchvision_stub.py).
set -euo pipefail

VENV=${1:?usage: setup_official_env.sh VENV_DIR CODE_DIR [SOURCE]}
CODE=${2:?usage: setup_official_env.sh VENV_DIR CODE_DIR [SOURCE]}
SOURCE=${3:-https://github.com/xunushan/X-VLA.git}
COMMIT=2c4fedf36b57b14ab661ee083b46d4544445457c
PYTHON=${PYTHON:-python3.11}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# --- the official code at the pinned commit (models/, deploy.py; no datasets or evaluation)
if [ ! -f "$CODE/deploy.py" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    if [ -d "$SOURCE" ]; then
        git_dir=$SOURCE
    else
        git clone --quiet --bare --filter=blob:none "$SOURCE" "$tmp/repo.git"
        git_dir=$tmp/repo.git
    fi
    mkdir -p "$CODE"
    git -C "$git_dir" archive "$COMMIT" models deploy.py requirements.txt LICENSE | tar -x -C "$CODE"
fi
(cd "$CODE" && sha256sum --check --quiet) <<'SUMS'
c5974c20b8071c95ebdeb41d132f69ca8a05b5324f651a97a24cb0dbcad99f54  models/action_hub.py
de2e45a975b3582de05d2f4d963a3e9f9a3d20dccf78d28e0052932a0be93bdf  models/configuration_florence2.py
69f73b054d6a454e2178dc53772223069d19e26da5f46c141f9716cb4b0f7cc1  models/configuration_xvla.py
ebed9223ee776c142de962ea71eaa30a0bf1f55e728de136dc7fe13ef830f4af  models/modeling_florence2.py
b235f67bf70c4c7e0ad3a1c633e48028348d4e3e26a341f5fedd9b3bdb9acf5c  models/modeling_xvla.py
337f4c61a88d033da7e8cef6e6ae9efcd978d3540983c5de70a23f445141c308  models/transformer.py
f75d213f3897d87a896ffdc014d4075d9bc374d67a38a098e4c007b3b884d1b6  models/processing_xvla.py
e2f40c54dc09d01a5942e43b0680d160861cf40f7d9dfc08e0e2bdad1350cef6  deploy.py
SUMS
echo "official code: $CODE (commit $COMMIT, models/*.py and deploy.py sha256 verified)"

# --- the venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "torch==2.13.0" "transformers==4.51.3" safetensors numpy einops timm \
    fastapi uvicorn json_numpy pillow opencv-python-headless
"$VENV/bin/pip" uninstall --quiet --yes torchvision 2>/dev/null || true
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$site/torchvision"
cp "$HERE/torchvision_stub.py" "$site/torchvision/__init__.py"
"$VENV/bin/python" - "$CODE" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import timm, torch, transformers
from models.modeling_xvla import XVLA  # noqa: F401  (the official model builds its imports)
print(f"official venv: torch {torch.__version__}, transformers {transformers.__version__}, timm {timm.__version__}")
PY
