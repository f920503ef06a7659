"""Pre-extracted caption embeddings for `eos_contrastive` (Ak et al. sec. 4.1: "We pre-extract text
embeddings to save computation during the first stage").

In stage 1 the LLM is frozen, so a caption's EOS embedding never changes: compute it once per dataset
and read rows during training instead of running the LLM over every caption every step.

Layout: `<root>/<key>/embeddings.npy` ([N, D] float16, row i = dataset record i, written as a memory
map), `progress.json` (rows done), `complete.json` (written last). The key hashes everything the rows
depend on: the LLM (config + a sample of every weight tensor), the tokenizer, the prompt template and
read position, max_length and the data file's bytes. Change any of them and the key changes, so a
stale cache is never read. An interrupted extraction resumes from the last flushed chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlalign.files import write_file_atomically
from vlalign.data.eos_layout import TEXT_TEMPLATE, read_positions, text_inputs
from vlalign.models.eos_embedding import eos_states
from vlalign.models.fingerprint import update_with_weights

CHUNK_ROWS = 256  # rows per flush: what an interruption can lose


def default_root() -> Path:
    return Path(os.environ.get("VLALIGN_CACHE", Path.home() / ".cache" / "vlalign")) / "eos_text"


def llm_fingerprint(language_model, tokenizer) -> str:
    """Content hash of an LLM without reading all of it: config, every tensor's name/shape and its first
    and last 64 values, and the tokenizer's vocabulary size and special tokens."""
    digest = hashlib.sha256()
    digest.update(language_model.config.to_json_string().encode())
    update_with_weights(digest, language_model)
    digest.update(json.dumps([len(tokenizer), tokenizer.eos_token, tokenizer.pad_token]).encode())
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(llm: str, prompt: dict, data: str) -> str:
    """One key from the three hashes the cache depends on (LLM, prompt settings, data file)."""
    return hashlib.sha256(json.dumps({"llm": llm, "prompt": prompt, "data": data}, sort_keys=True).encode()).hexdigest()[:24]


class TextEmbeddingCache:
    def __init__(self, folder: Path, rows: int, dim: int):
        self.folder = folder
        self.rows, self.dim = rows, dim

    @property
    def complete(self) -> bool:
        return (self.folder / "complete.json").is_file()

    def rows_done(self) -> int:
        progress = self.folder / "progress.json"
        return json.loads(progress.read_text())["rows_done"] if progress.is_file() else 0

    def open(self, mode: str) -> np.memmap:
        path = self.folder / "embeddings.npy"
        if mode == "w+" and not path.is_file():
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(self.rows, self.dim))
        array = np.load(path, mmap_mode="r+" if mode == "w+" else "r")
        if array.shape != (self.rows, self.dim):
            raise RuntimeError(f"text cache {path} holds {array.shape}, expected {(self.rows, self.dim)}; "
                               f"delete the folder to rebuild it")
        return array

    def _write_json(self, name: str, payload: dict) -> None:
        write_file_atomically(self.folder / name, json.dumps(payload))  # a reader never sees half a file

    def fill(self, embed_rows, texts: list[str], batch_size: int, description: dict, progress: bool = True) -> None:
        """Embed `texts[rows_done:]` with `embed_rows(list[str]) -> [n, D]`, flushing every CHUNK_ROWS rows."""
        self.folder.mkdir(parents=True, exist_ok=True)
        start = self.rows_done()
        array = self.open("w+")
        with tqdm(total=len(texts), initial=start, desc="caption EOS embeddings (cached once)", unit="text",
                  disable=not progress) as bar:
            while start < len(texts):
                stop = min(start + CHUNK_ROWS, len(texts))
                for lo in range(start, stop, batch_size):
                    hi = min(lo + batch_size, stop)
                    array[lo:hi] = embed_rows(texts[lo:hi]).float().cpu().numpy().astype(np.float16)
                    bar.update(hi - lo)
                array.flush()
                self._write_json("progress.json", {"rows_done": stop})
                start = stop
                fault = os.environ.get("VLALIGN_FAULT")
                if fault == f"text_cache_after_{stop}":  # crash-test hook, as train.checkpoint.fault_point
                    raise SystemExit(f"[vlalign] fault injected: {fault}")
        self._write_json("complete.json", {"rows": len(texts), "dim": self.dim, **description})


def build_text_cache(model, texts: list[str], data_file: str | Path, prompt: bool, read: str, max_length: int,
                     root: str | Path | None = None, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """The [N, D] caption embeddings for `texts` (row i = dataset record i), building what is missing."""
    settings = {"text_template": TEXT_TEMPLATE if prompt else None, "read": read,
                "max_length": max_length}
    key = cache_key(llm_fingerprint(model.language_model, model.tokenizer), settings, file_digest(data_file))
    cache = TextEmbeddingCache((Path(root) if root else default_root()) / key, len(texts), model.hidden_size)
    if not cache.complete:
        model.eval()  # the training loop puts the module back in train mode (frozen parts stay in eval)

        @torch.no_grad()
        def embed_rows(batch: list[str]) -> torch.Tensor:
            inputs = text_inputs(model.tokenizer, batch, prompt, max_length)
            device = model.language_model.get_input_embeddings().weight.device
            output = model(inputs.input_ids.to(device), inputs.attention_mask.to(device), None)
            return eos_states(output.hidden_states, read_positions(inputs.eos_positions, read))

        cache.fill(embed_rows, texts, batch_size, {"data_file": str(data_file), **settings}, progress)
    return cache.open("r")
