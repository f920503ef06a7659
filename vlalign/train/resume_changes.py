"""What `--resume` does with a config that differs from the run it continues.

A resumed run must end as if it had never stopped, and `final/config.yaml` must say what produced the weights.
So each changed key is one of:
- safe to apply (how long to train, when to save and log, evaluation, the output folder): applied and printed;
- the learning-rate schedule (lr, vision_lr, warmup, weight decay, clipping): a deliberate change, applied only with
  `--allow-changes` (the restored optimizer and scheduler would otherwise silently keep the old values) and
  recorded in the checkpoints' trainer_state.json;
- anything else (batch size, accumulation, data, model, seed, objectives, tuning recipe, precision): it would
  break the exact continuation, so it is refused with the list of changed keys.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vlalign.config import RunConfig
from vlalign.errors import ConfigError

SAFE = ("train.max_steps", "train.epochs", "train.save_every", "train.keep_checkpoints", "train.log_every",
        "train.eval", "train.output_dir", "train.on_nonfinite", "train.max_nonfinite_in_a_row", "data.num_workers")
SCHEDULE = ("train.lr", "train.vision_lr", "train.warmup_ratio", "train.weight_decay", "train.max_grad_norm")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key not in ("objectives", "model.connector_options"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _kind(key: str) -> str:
    def under(prefixes) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)
    return "safe" if under(SAFE) else "schedule" if under(SCHEDULE) else "breaking"


def config_changes(checkpoint: Path, config: RunConfig, allow_changes: bool) -> list[str]:
    """The applied changes as `key: old -> new` lines (printed and recorded); ConfigError for the others."""
    path = Path(checkpoint) / "config.yaml"
    try:
        saved = flatten(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--resume {checkpoint}: cannot read its config.yaml ({exc})") from None
    current = flatten(config.model_dump(mode="json"))
    changed = {key: (saved.get(key), current.get(key)) for key in sorted(set(saved) | set(current))
               if saved.get(key) != current.get(key)}
    lines = {key: f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items()}
    breaking = [lines[key] for key in changed if _kind(key) == "breaking"]
    if breaking:
        raise ConfigError(f"--resume {checkpoint}: these settings differ from the run being resumed and would break "
                          f"its exact continuation: {'; '.join(breaking)}. Restore them, or start a new run "
                          f"(another train.output_dir, or --overwrite)")
    schedule = [lines[key] for key in changed if _kind(key) == "schedule"]
    if schedule and not allow_changes:
        raise ConfigError(f"--resume {checkpoint}: the learning-rate schedule differs from the run being resumed "
                          f"({'; '.join(schedule)}); pass --allow-changes to apply it from here on (it is recorded), "
                          f"or restore the old values")
    return list(lines.values())
