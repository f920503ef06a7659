"""Compare two runs of the same command, e.g. before and after a refactor: every saved tensor and every
number in metrics.json must agree, timings aside.

    python scripts/run_digest.py RUN_A RUN_B      # folders holding model.safetensors files and/or metrics.json

Prints the differing tensors and metric paths (nothing when the runs are identical); exit code 1 when any
differ. Timings (seconds, samples_per_s, runtime_s, images_per_s, peak_rss_mb) and file paths are ignored.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

IGNORED = {"seconds", "samples_per_s", "runtime_s", "images_per_s", "peak_rss_mb", "reused",
           "word_embedding_seconds", "patches_per_second", "labels"}


def tensor_digests(root: Path) -> dict[str, str]:
    """{relative file/tensor name: sha256 of its bytes} for every final model.safetensors under `root`."""
    digests = {}
    for path in sorted(root.rglob("model.safetensors")):
        if any(part.startswith("checkpoint-") for part in path.parts):
            continue
        for name, tensor in load_file(str(path)).items():
            data = tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes()
            digests[f"{path.relative_to(root)}:{name}"] = hashlib.sha256(data).hexdigest()
    return digests


def numbers(value, prefix: str = "") -> dict[str, object]:
    """Every leaf of a JSON tree by its path, without the ignored keys."""
    if isinstance(value, dict):
        leaves = {}
        for key, child in value.items():
            if key not in IGNORED:
                leaves.update(numbers(child, f"{prefix}{key}."))
        return leaves
    if isinstance(value, list):
        leaves = {}
        for index, child in enumerate(value):
            leaves.update(numbers(child, f"{prefix}{index}."))
        return leaves
    return {prefix.rstrip("."): value}


def differences(a: Path, b: Path) -> list[str]:
    found = []
    tensors_a, tensors_b = tensor_digests(a), tensor_digests(b)
    for name in sorted(set(tensors_a) | set(tensors_b)):
        if name not in tensors_a or name not in tensors_b:
            found.append(f"tensor {name}: only in {a if name in tensors_a else b}")
        elif tensors_a[name] != tensors_b[name]:
            found.append(f"tensor {name}: differs")
    if (a / "metrics.json").is_file() or (b / "metrics.json").is_file():
        metrics_a = numbers(json.loads((a / "metrics.json").read_text()))
        metrics_b = numbers(json.loads((b / "metrics.json").read_text()))
        found += [f"metric {key}: {metrics_a.get(key)!r} vs {metrics_b.get(key)!r}"
                  for key in sorted(set(metrics_a) | set(metrics_b)) if metrics_a.get(key) != metrics_b.get(key)]
    print(f"{len(tensors_a)} / {len(tensors_b)} tensors, compared by SHA-256 of their bytes", file=sys.stderr)
    return found


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    diffs = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diffs[:40] + ([f"... and {len(diffs) - 40} more"] if len(diffs) > 40 else []))
          if diffs else "identical")
    sys.exit(1 if diffs else 0)
