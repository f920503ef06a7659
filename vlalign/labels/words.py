"""Word lists for SEA patch labels: a file, a general English list, or the shapes world's vocabulary.

The paper labels patches from the 41K-word 2of12 list (12dicts). 2of12 is not packaged anywhere this
project can install from, so the general default is Debian's `wamerican` (/usr/share/dict/american-english,
104K entries): reduced to lowercase purely alphabetic entries (no possessives "cat's", no proper nouns,
no abbreviations) it holds ~64K common English words, the same kind of list at a similar scale.

A list is a plain sequence of distinct strings; its position is the label id stored in the cache, so the
cache keeps its own copy (words.txt) and its SHA-256, and never depends on the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlalign.errors import ConfigError

ENGLISH = "english"
SHAPES = "shapes"
# Debian's wamerican first (its canonical name, then the alternatives-managed alias), then wbritish.
SYSTEM_WORD_FILES = ("/usr/share/dict/american-english", "/usr/share/dict/words", "/usr/share/dict/british-english")
INSTALL_HINT = "install Debian's word list with `apt-get install wamerican`, or pass --words FILE (one word per line)"
BACKGROUND_WORD = "background"  # the shapes world's name for an uncovered patch, as `eval alignment` uses


def read_word_file(path: str | Path) -> list[str]:
    """One word (or short phrase) per line; blank lines and '#' comments skipped; first occurrence kept."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"word list {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"word list {path}: not UTF-8 text (byte {exc.start})") from None
    words = [line.strip() for line in lines]
    words = list(dict.fromkeys(word for word in words if word and not word.startswith("#")))
    if not words:
        raise ConfigError(f"word list {path} has no words (one per line expected)")
    return words


def english_words(path: str | Path | None = None) -> list[str]:
    """The general English list: lowercase alphabetic entries of the system dictionary, in file order."""
    candidates = [Path(path)] if path is not None else [Path(p) for p in SYSTEM_WORD_FILES]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise ConfigError(f"no general English word list found at {', '.join(map(str, candidates))}; {INSTALL_HINT}")
    raw = found.read_text(encoding="utf-8", errors="replace").splitlines()
    # Lowercase-only drops proper nouns ("Paris") and acronyms; isalpha drops "cat's" and "e.g."; the
    # isascii test drops accented loanwords that the LLM tokenizers split into many byte tokens.
    words = [word for word in (line.strip() for line in raw) if word.isascii() and word.isalpha() and word.islower()]
    return list(dict.fromkeys(words))


def shapes_words(world_root: str | Path) -> list[str]:
    """The shapes world's own vocabulary (colours, shapes, sizes) plus 'background', from manifest.json."""
    manifest_path = Path(world_root) / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"--words shapes needs a shapes world: {manifest_path} does not exist")
    try:
        vocab = json.loads(manifest_path.read_text())["vocab"]
        words = [*vocab["colors"], *vocab["shapes"], *vocab["sizes"], BACKGROUND_WORD]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest_path}: no usable 'vocab' with colors/shapes/sizes ({exc!r})") from None
    return list(dict.fromkeys(words))


def resolve_words(spec: str | None, image_root: str | Path | None = None) -> tuple[list[str], str]:
    """`--words` -> (words, description). spec: a file, 'english', 'shapes', names joined by '+', or None.

    None means the default: the English list, plus the shapes world's vocabulary when `image_root` is a
    shapes world (its words are what the demo's captions, and so the demo dual encoder, know).
    """
    if spec is None:
        is_world = image_root is not None and (Path(image_root) / "manifest.json").is_file()
        spec = f"{ENGLISH}+{SHAPES}" if is_world else ENGLISH
    if Path(spec).is_file():
        return read_word_file(spec), str(spec)
    words: list[str] = []
    for part in spec.split("+"):
        if part == ENGLISH:
            words += english_words()
        elif part == SHAPES:
            if image_root is None:
                raise ConfigError("--words shapes needs --image-root (the shapes world folder)")
            words += shapes_words(image_root)
        else:
            raise ConfigError(f"--words {spec!r}: {part!r} is neither a file nor one of {ENGLISH!r}, {SHAPES!r}")
    return list(dict.fromkeys(words)), spec


def words_digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()
