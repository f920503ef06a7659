"""Shared prelude of the benchmark scripts: offline, quiet Hugging Face libraries and the repository on
sys.path (the scripts run as `python benchmarks/NAME.py`, whose folder Python puts on sys.path)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
