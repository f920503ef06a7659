"""Save and load a trained packaged dual encoder: `heads.safetensors` + `config.json` in one folder.

Only the heads are saved; the towers are named by their source strings and reloaded from their packages,
so a checkpoint is ~1.5 MB and cannot drift from the towers it was trained on without the config saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vlalign.dual_encoder.heads import MAX_LOGIT_SCALE, ProjectionHeads
from vlalign.dual_encoder.packaged import PackagedDualEncoder, SentenceTower, load_frozen_image_tower
from vlalign.errors import ConfigError
from vlalign.files import write_file_atomically

FORMAT = "vlalign-packaged-dual-encoder"
FORMAT_VERSION = 1
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"


def encoder_config(encoder: PackagedDualEncoder, training: dict | None = None) -> dict:
    heads = encoder.heads
    scale = heads.logit_scale().item()
    transform = encoder.image_transform
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "vision_tower": encoder.vision_tower.source, "text_tower": encoder.text_tower.source,
        "text_pooling": "mean over non-padding tokens, then L2 normalise (sentence-transformers)",
        "image_size": transform.size, "image_mean": [float(v) for v in transform.mean],
        "image_std": [float(v) for v in transform.std], "image_aspect": transform.aspect,
        "patch_grid": list(encoder.patch_grid),
        "image_feature_dim": heads.image_dim, "text_feature_dim": heads.text_dim,
        "embed_dim": heads.embed_dim, "hidden_dim": heads.hidden_dim,
        "heads": "per-cell LayerNorm+Linear (image: mean over cells), LayerNorm+Linear (text)"
                 if heads.hidden_dim <= 0 else f"LayerNorm+MLP({heads.hidden_dim}, GELU), per cell for images",
        "logit_scale": scale, "temperature": 1.0 / scale, "max_logit_scale": MAX_LOGIT_SCALE,
        "training": training or {},
    }


def save_dual_encoder(encoder: PackagedDualEncoder, out_dir: str | Path, training: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.heads.state_dict().items()}
    # bytes, then an ordinary write: safetensors' save_file creates its file owner-only (0600)
    payload = save(state, metadata={"format": FORMAT})
    write_file_atomically(out_dir / HEADS_FILE, payload)
    text = json.dumps(encoder_config(encoder, training), indent=2)
    write_file_atomically(out_dir / CONFIG_FILE, text)
    return out_dir


def _field(config: dict, name: str, kind: type, path: Path):
    if name not in config:
        raise ConfigError(f"{path}: field {name!r} is missing (not a packaged dual-encoder folder?)")
    value = config[name]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{path}: field {name!r} should be {kind.__name__}, got {value!r}")
    return value


def load_dual_encoder(out_dir: str | Path) -> PackagedDualEncoder:
    """Rebuild a trained `PackagedDualEncoder` from the folder `train_dual_encoder` wrote."""
    out_dir = Path(out_dir)
    config_path, heads_path = out_dir / CONFIG_FILE, out_dir / HEADS_FILE
    for path in (config_path, heads_path):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; is {out_dir} the output folder of train-dual-encoder?")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{config_path}: field 'format' should be {FORMAT!r}, got {found!r}")
    if _field(config, "format_version", int, config_path) > FORMAT_VERSION:
        raise ConfigError(f"{config_path}: format_version {config['format_version']} is newer than this "
                          f"vlalign reads ({FORMAT_VERSION})")
    heads = ProjectionHeads(_field(config, "image_feature_dim", int, config_path),
                            _field(config, "text_feature_dim", int, config_path),
                            _field(config, "embed_dim", int, config_path),
                            _field(config, "hidden_dim", int, config_path))
    try:
        heads.load_state_dict(load_file(str(heads_path)), strict=True)
    except (RuntimeError, OSError, SafetensorError) as exc:  # wrong/missing tensors, or not a tensor file
        raise ConfigError(f"{heads_path}: tensors do not fit the heads described in {config_path.name}: "
                          f"{' '.join(str(exc).split())[:600]}") from exc
    # towers last: they take seconds to load, and every cheap check above should fail first
    vision_tower = load_frozen_image_tower(_field(config, "vision_tower", str, config_path))
    text_tower = SentenceTower(_field(config, "text_tower", str, config_path))
    encoder = PackagedDualEncoder(heads, vision_tower, text_tower, _field(config, "image_aspect", str, config_path))
    if encoder.image_transform.size != _field(config, "image_size", int, config_path):
        raise ConfigError(f"{config_path}: field 'image_size' is {config['image_size']} but the tower "
                          f"{config['vision_tower']!r} expects {encoder.image_transform.size}")
    return encoder.eval()
