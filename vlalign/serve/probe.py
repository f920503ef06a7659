"""The nearest-word probe of `vlalign eval alignment` on one image: the LLM word each visual token recalls
(cosine with the input word embeddings, vlalign.eval.alignment.nearest_words), drawn cell by cell over the
image the model saw (SEA, Fig. 1-2 and 6).

Candidate words: a `--words` file; else the shapes world's vocabulary when the checkpoint was trained on
one (the demo); else the tokenizer's own word-initial tokens (a leading-space marker, then letters), the most
frequent first.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from vlalign.errors import ConfigError
from vlalign.eval.alignment import nearest_words
from vlalign.eval.alignment_plots import plot_recalled_words
from vlalign.eval.alignment_run import word_embedding_table, world_words
from vlalign.serve.generation import ChatModel

WORD_LIMIT = 20000  # tokenizer words kept as candidates (a 150k-token vocabulary would cost GBs of table)
DISPLAY_SIZE = 336  # the picture's side in pixels, whatever the tower's input size
WORD_MARKERS = ("\u0120", "\u2581")  # byte-level BPE's and SentencePiece's "starts a word"


def read_words(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--words {path} does not exist")
    words = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not words:
        raise ConfigError(f"--words {path} holds no words (one per line)")
    return list(dict.fromkeys(words))


def tokenizer_words(tokenizer, limit: int = WORD_LIMIT) -> list[str]:
    """Vocabulary entries that start a word: the leading-space marker, then letters only (a whole word or its
    first piece), in id order (BPE merges and SentencePiece pieces come roughly most frequent first)."""
    words = []
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if token and token[0] in WORD_MARKERS and len(token) > 2 and token[1:].isalpha():
            words.append(token[1:])
    return list(dict.fromkeys(words))[:limit]


def candidate_words(chat_model: ChatModel, words_file: str | Path | None = None) -> tuple[list[str], str]:
    """(words, where they came from)."""
    if words_file is not None:
        return read_words(words_file), f"the words of {words_file}"
    root = chat_model.config.data.image_root
    manifest = Path(root) / "manifest.json" if root else None
    if manifest is not None and manifest.is_file():
        vocab = json.loads(manifest.read_text()).get("vocab")
        if vocab:
            return [w for group in world_words(vocab).values() for w in group], "the shapes world's vocabulary"
    words = tokenizer_words(chat_model.model.tokenizer)
    if not words:
        raise ConfigError("the tokenizer has no word-initial tokens to use as candidate words; pass --words FILE")
    return words, f"{len(words)} word-initial tokens of the tokenizer"


class RecalledWords:
    """Draws the probe for one image at a time; the word table is built on first use."""

    def __init__(self, chat_model: ChatModel, out_dir: Path, words_file: str | Path | None = None):
        self.chat_model, self.out_dir, self.words_file = chat_model, Path(out_dir), words_file
        self._table: tuple[list[str], torch.Tensor, str] | None = None
        self._table_lock = threading.Lock()
        self._drawn = 0

    @property
    def unavailable(self) -> str | None:
        """Why there is nothing to draw per patch, or None."""
        model = self.chat_model.model
        if model.token_grid() is not None:
            return None
        return (f"this checkpoint's connector ({model.config.connector}) gives {model.num_visual_tokens} visual "
                f"tokens that are not laid out on the image's patch grid, so there is no word per patch to draw")

    def words(self) -> tuple[list[str], torch.Tensor, str]:
        with self._table_lock:
            if self._table is None:
                words, source = candidate_words(self.chat_model, self.words_file)
                table = word_embedding_table(self.chat_model.model, words).float().cpu()
                self._table = (words, table, source)
            return self._table

    def draw(self, image: str | Path) -> tuple[Path, str]:
        """(PNG path, a one-line summary) for an image file."""
        if (reason := self.unavailable) is not None:
            raise ConfigError(reason)
        words, table, source = self.words()
        model = self.chat_model.model
        prefix, rows, cols = model.token_grid()
        pixels = self.chat_model.image_pixels(image)
        device = model.language_model.get_input_embeddings().weight.device
        with self.chat_model.lock, torch.no_grad():
            tokens = model.encode_images(pixels.to(device))[0, prefix:].float().cpu()
        index, _ = nearest_words(tokens, table)
        recalled = [words[i] for i in index.tolist()]
        cells = [recalled[row * cols:(row + 1) * cols] for row in range(rows)]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._drawn += 1
        path = plot_recalled_words(self.seen_image(pixels), cells, None, self.out_dir / f"recalled_{self._drawn}.png")
        common = ", ".join(f"{word} ({count})" for word, count in Counter(recalled).most_common(5))
        return path, f"{rows}x{cols} visual tokens against {source}; most recalled: {common}"

    def seen_image(self, pixels: torch.Tensor) -> Image.Image:
        """The image as the tower got it (padded or cropped to a square, resized), so the cells line up."""
        transform = self.chat_model.transform
        mean = torch.tensor(transform.mean).view(3, 1, 1)
        std = torch.tensor(transform.std).view(3, 1, 1)
        array = ((pixels[0] * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.BICUBIC)
