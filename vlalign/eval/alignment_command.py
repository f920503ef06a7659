"""`vlalign eval alignment --checkpoint DIR --data FILE --out DIR`: alignment.json, the PNGs, alignment.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlalign.data.images import load_image
from vlalign.errors import ConfigError
from vlalign.eval import alignment_plots as plots
from vlalign.eval.alignment_run import (caption_words, collect, load_world_truth, read_pairs, summarize,
                                        word_embedding_table, world_words)
from vlalign.train.load import load_checkpoint_model


def _read_words(path: str | Path) -> list[str]:
    words = [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not words:
        raise ConfigError(f"--words {path} holds no words (one per line)")
    return list(dict.fromkeys(words))


def _pictures(collected, pairs, image_root: Path, words, truth, grid, model, out: Path) -> list[str]:
    names = [plots.plot_tsne(torch.cat(collected.image_eos), torch.cat(collected.text_eos), out / "tsne.png").name]
    if grid is None:
        return names
    _, rows, cols = grid
    for index, example in sorted(collected.examples.items()):
        pair = pairs[index]
        image = load_image(image_root / pair.image).resize((224, 224))
        recalled = collected.recalled[index].tolist()
        cell_words = [[words[recalled[r * cols + c]] for c in range(cols)] for r in range(rows)]
        correct = None
        if truth is not None:
            cells = truth[pair.image]
            correct = [[cell_words[r][c] in cells.accepted[r][c] for c in range(cols)] for r in range(rows)]
        names.append(plots.plot_recalled_words(image, cell_words, correct, out / f"recalled_{index}.png").name)
        tokens = example["tokens"]
        caption_tokens = example["caption_tokens"]
        cosines = (torch.nn.functional.normalize(caption_tokens, dim=-1)
                   @ torch.nn.functional.normalize(tokens, dim=-1).T).reshape(-1, rows, cols)
        texts = [model.tokenizer.decode([i]) for i in example["caption_ids"]]
        names.append(plots.plot_token_heatmaps(image, texts, cosines, out / f"heatmap_{index}.png").name)
    return names


def run_alignment(checkpoint: str | Path, data: str | Path, out: str | Path, *, image_root: str | Path | None = None,
                  limit: int | None = 1000, batch_size: int = 16, words_file: str | Path | None = None,
                  prompt: bool = True, examples: int = 2, model=None, config=None) -> dict:
    """Measure one checkpoint (or an already loaded `model`, `config`); write everything under `out`."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model, config = load_checkpoint_model(checkpoint, merge_adapters=True)
    pairs, root = read_pairs(data, image_root, limit)
    if len(pairs) < 2:
        raise ConfigError(f"--data {data}: alignment needs at least 2 image-caption pairs, found {len(pairs)}")
    grid = model.token_grid()
    world = load_world_truth(root, grid[1], grid[2]) if grid is not None else None
    truth, vocab = world if world is not None else (None, None)
    if words_file is not None:
        groups_words = {"words": _read_words(words_file)}
    elif vocab is not None:
        groups_words = world_words(vocab)
    else:
        groups_words = {"words": caption_words(pairs)}
    words = [word for group in groups_words.values() for word in group]
    groups, offset = {}, 0
    for name, members in groups_words.items():
        if name in ("color", "shape"):
            groups[name] = list(range(offset, offset + len(members)))
        offset += len(members)
    with tqdm(total=len(pairs), desc="alignment", unit="pair") as progress:
        collected = collect(model, config, pairs, root, words, groups, batch_size=batch_size, prompt=prompt,
                            keep_examples=examples, progress=progress)
    word_norm = float(word_embedding_table(model, words).norm(dim=-1).mean())
    result = summarize(collected, pairs, words, word_norm, groups, truth, grid)
    result["pictures"] = _pictures(collected, pairs, root, words, truth, grid, model, out)
    result["settings"] = {"checkpoint": str(checkpoint), "data": str(data), "prompt": prompt,
                          "words": "file" if words_file else ("shapes world" if vocab else "caption vocabulary"),
                          "token_grid": list(grid[1:]) if grid else None,
                          "ground_truth": truth is not None}
    result["seconds"] = time.perf_counter() - started
    (out / "alignment.json").write_text(json.dumps(result, indent=2))
    (out / "alignment.md").write_text(alignment_markdown(result))
    return result


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def alignment_markdown(result: dict, link_prefix: str = "", title: str = "Alignment diagnostics") -> str:
    """A markdown section; `link_prefix` is the pictures' folder relative to where the markdown lands."""
    eos, token = result["eos"], result["token"]
    recall = " / ".join(f"{key} {_pct(value)}" for key, value in eos.items() if "@" in key)
    lines = [f"### {title}", "",
             f"{result['pairs']} held-out image-caption pairs ({result['captions_truncated']} captions truncated).", "",
             "| measure | value |", "|---|---:|",
             f"| EOS modality gap (0 = centroids coincide) | {eos['modality_gap']:.3f} |",
             f"| EOS retrieval Recall@K (%) | {recall} |",
             f"| gap score D (mean cosine distance to nearest word) | {token['gap_score_D']:.3f} |",
             f"| TACS (top-10 visual-token max cosine with own caption) | {token['tacs']:.3f} |",
             f"| visual token / word embedding norm | {token['visual_token_norm']:.2f} / "
             f"{token['word_embedding_norm']:.2f} |"]
    probe = token.get("probe")
    if probe:
        lines.append(f"| nearest-word probe: cell named correctly (%) | {_pct(probe['accuracy'])} "
                     f"(objects {_pct(probe['object_accuracy'])}, background {_pct(probe['background_accuracy'])}) |")
        for name in ("color", "shape"):
            if f"{name}_accuracy" in probe:
                lines.append(f"| {name} word of the object under the token (%) | {_pct(probe[f'{name}_accuracy'])} "
                             f"(chance {_pct(probe[f'{name}_chance'])}) |")
    words = ", ".join(f"{word} ({count})" for word, count in token["recalled_words"].items())
    lines += ["", f"Most recalled words: {words}.", ""]
    lines += [f"![{name}]({link_prefix}{name})" for name in result.get("pictures", [])]
    return "\n".join(lines) + "\n"
