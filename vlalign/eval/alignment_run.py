"""`vlalign eval alignment`: the seed papers' alignment diagnostics on any checkpoint, as numbers and pictures.

Sequence level: EOS embeddings (vlalign.models.eos_embedding, the `eos_contrastive` definition) of the
images and captions -> modality gap and Recall@1/5/10. Token level: every projected visual token
against the LLM's input word embeddings -> the word it recalls, the gap score D, TACS; with the shapes
world's per-patch ground truth, how often the recalled word names what lies under that patch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlalign.data.build import image_transform_for
from vlalign.data.images import load_image
from vlalign.data.llava_json import load_records
from vlalign.errors import ConfigError, DataError
from vlalign.data.eos_layout import image_inputs
from vlalign.eval.alignment import gap_score, nearest_words, tacs
from vlalign.losses.retrieval import modality_gap, retrieval_recall
from vlalign.models.eos_embedding import embed_texts, eos_states

RECALL_KS = (1, 5, 10)
BACKGROUND_WORD = "background"


@dataclass(frozen=True)
class Pair:
    id: str
    image: str  # relative to the image root: the key of the shapes world's ground truth
    caption: str


@dataclass(frozen=True)
class CellTruth:
    """Per image: the words that correctly name each cell of the token grid."""

    accepted: list[list[set[str]]]  # [rows][cols] -> accepted words
    objects: list[list[tuple[str, str] | None]]  # [rows][cols] -> (color, shape) or None for background


def read_pairs(path: str | Path, image_root: str | Path | None, limit: int | None) -> tuple[list[Pair], Path]:
    """Image-caption pairs from LLaVA JSON (caption = the first gpt turn); image root auto-found when None:
    the data file's folder or its parent (the shapes world keeps test/*.json beside images/)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--data {path} does not exist")
    if image_root is None:
        first = json.loads(path.read_text())[0] if path.suffix == ".json" else json.loads(path.open().readline())
        image = first.get("image") if isinstance(first, dict) else None
        candidates = [path.parent, path.parent.parent]
        image_root = next((c for c in candidates if image and (c / image).is_file()), path.parent)
    root = Path(image_root)
    pairs = []
    for record in load_records(path, root):
        if record.image is None:
            raise DataError("alignment pairs need an image; this record is text-only", reason="missing_image",
                            record_id=record.id, file=str(path), field="image")
        caption = next(turn.text for turn in record.turns if turn.role == "assistant").strip()
        if not caption:
            raise DataError("empty caption (first gpt turn)", reason="bad_turn", record_id=record.id,
                            file=str(path), field="conversations")
        pairs.append(Pair(record.id, record.image.relative_to(root).as_posix(), caption))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs, root


def load_world_truth(image_root: Path, rows: int, cols: int) -> tuple[dict[str, CellTruth], dict] | None:
    """Per-image cell truth from a shapes world (manifest.json + scenes_*.jsonl under the image root)."""
    manifest_path = image_root / "manifest.json"
    if not manifest_path.is_file() or rows != cols:
        return None
    manifest = json.loads(manifest_path.read_text())
    truth = {}
    for scenes in sorted(image_root.glob("scenes_*.jsonl")):
        for line in scenes.read_text().splitlines():
            scene = json.loads(line)
            labels = scene.get("patch_labels", {}).get(str(rows))
            if labels is None:
                return None
            accepted, objects = [], []
            for label_row in labels:
                accepted.append([]), objects.append([])
                for label in label_row:
                    if label < 0:
                        accepted[-1].append({BACKGROUND_WORD})
                        objects[-1].append(None)
                    else:
                        obj = scene["objects"][label]
                        accepted[-1].append({obj["color"], obj["shape"], obj["size"]})
                        objects[-1].append((obj["color"], obj["shape"]))
            truth[scene["image"]] = CellTruth(accepted, objects)
    return truth, manifest["vocab"]


def world_words(vocab: dict) -> dict[str, list[str]]:
    return {"color": sorted(vocab["colors"]), "shape": list(vocab["shapes"]), "size": list(vocab["sizes"]),
            "other": [BACKGROUND_WORD]}


def caption_words(pairs: list[Pair], limit: int = 2000) -> list[str]:
    """Without a world vocabulary: the captions' own alphabetic words, most frequent first."""
    counts = Counter(word for pair in pairs for word in pair.caption.lower().replace(".", " ").split()
                     if word.isalpha())
    return [word for word, _ in counts.most_common(limit)]


def word_embedding_table(model, words: list[str]) -> torch.Tensor:
    """[W, D]: each word's LLM input embedding, as it appears mid-sentence (with a leading space); the
    mean over its sub-word tokens when the tokenizer splits it."""
    embedding = model.language_model.get_input_embeddings().weight
    rows = []
    for word in words:
        ids = model.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"candidate word {word!r} tokenizes to nothing")
        rows.append(embedding[ids].float().mean(dim=0))
    return torch.stack(rows)


@dataclass
class Collected:
    image_eos: list[torch.Tensor] = field(default_factory=list)
    text_eos: list[torch.Tensor] = field(default_factory=list)
    recalled: list[torch.Tensor] = field(default_factory=list)  # [Nv] word index per visual token
    gap: list[float] = field(default_factory=list)  # per image: D over its visual tokens
    group_choice: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # group -> [Nv] index in group
    tacs: list[float] = field(default_factory=list)
    visual_norm: list[float] = field(default_factory=list)
    examples: dict[int, dict] = field(default_factory=dict)  # pair index -> tensors kept for the pictures
    truncated: int = 0


@torch.no_grad()
def collect(model, config, pairs: list[Pair], image_root: Path, words: list[str],
            groups: dict[str, list[int]], *, batch_size: int = 16, prompt: bool = True,
            keep_examples: int = 4, progress=None) -> Collected:
    """One pass over the pairs in batches: EOS embeddings of both sides and the token-level statistics."""
    transform = image_transform_for(model)
    embedding = model.language_model.get_input_embeddings().weight
    device = embedding.device  # statistics on the CPU, model passes wherever the model is
    word_table = word_embedding_table(model, words).float().cpu()
    grid = model.token_grid()
    prefix = grid[0] if grid else 0
    collected = Collected(group_choice={name: [] for name in groups})
    max_length = config.model.max_length
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        pixels = torch.stack([transform(load_image(image_root / pair.image)) for pair in chunk])
        inputs = image_inputs(model.tokenizer, model.image_token_id, model.num_visual_tokens,
                                            len(chunk), prompt)
        output = model(inputs.input_ids.to(device), inputs.attention_mask.to(device), pixels.to(device))
        collected.image_eos.append(
            eos_states(output.hidden_states, inputs.eos_positions.to(device)).float().cpu())
        texts, truncated = embed_texts(model, [pair.caption for pair in chunk], prompt, max_length)
        collected.text_eos.append(texts.float().cpu())
        collected.truncated += len(truncated)
        visual = output.visual_tokens.float().cpu()[:, prefix:]
        for offset, (pair, tokens) in enumerate(zip(chunk, visual)):
            index, _ = nearest_words(tokens, word_table)
            collected.recalled.append(index)
            collected.gap.append(gap_score(tokens, word_table))
            for name, members in groups.items():
                _, choice = torch.nn.functional.normalize(tokens, dim=-1).matmul(
                    torch.nn.functional.normalize(word_table[members], dim=-1).T).max(dim=1)
                collected.group_choice[name].append(choice)
            caption_ids = model.tokenizer(pair.caption, add_special_tokens=False)["input_ids"]
            caption_tokens = embedding[caption_ids].float().cpu()
            collected.tacs.append(tacs(tokens, caption_tokens))
            collected.visual_norm.append(float(tokens.norm(dim=-1).mean()))
            if start + offset < keep_examples:
                collected.examples[start + offset] = {"tokens": tokens, "caption_ids": caption_ids,
                                                      "caption_tokens": caption_tokens}
        if progress is not None:
            progress.update(len(chunk))
    return collected


def probe_accuracy(collected: Collected, pairs: list[Pair], truth: dict[str, CellTruth], words: list[str],
                   groups: dict[str, list[int]], cols: int) -> dict:
    """How often the recalled word names what covers the cell (object: its colour, shape or size;
    background: 'background'), and, restricted to the colour / shape words, how often it is the right one."""
    hits = Counter()
    totals = Counter()
    for index, pair in enumerate(pairs):
        cells = truth.get(pair.image)
        if cells is None:
            raise DataError("no ground truth for this image in the shapes world's scenes", reason="missing_image",
                            record_id=pair.id, field="image")
        for position, word_index in enumerate(collected.recalled[index].tolist()):
            row, col = divmod(position, cols)
            obj = cells.objects[row][col]
            kind = "background" if obj is None else "object"
            correct = words[word_index] in cells.accepted[row][col]
            hits[kind] += correct
            totals[kind] += 1
            if obj is not None:
                for name, attribute in (("color", obj[0]), ("shape", obj[1])):
                    if name in groups:
                        chosen = words[groups[name][int(collected.group_choice[name][index][position])]]
                        hits[name] += chosen == attribute
                        totals[name] += 1
    result = {"cells": totals["object"] + totals["background"],
              "accuracy": (hits["object"] + hits["background"]) / max(1, totals["object"] + totals["background"]),
              "object_cells": totals["object"], "object_accuracy": hits["object"] / max(1, totals["object"]),
              "background_accuracy": hits["background"] / max(1, totals["background"])}
    for name in ("color", "shape"):
        if totals[name]:
            result[f"{name}_accuracy"] = hits[name] / totals[name]
            result[f"{name}_chance"] = 1 / len(groups[name])
    return result


def summarize(collected: Collected, pairs: list[Pair], words: list[str], word_table_norm: float,
              groups: dict[str, list[int]], truth: dict | None, grid) -> dict:
    image_eos, text_eos = torch.cat(collected.image_eos), torch.cat(collected.text_eos)
    ks = tuple(k for k in RECALL_KS if k <= len(pairs))
    recalled = Counter(words[i] for tokens in collected.recalled for i in tokens.tolist())
    visual_norm = sum(collected.visual_norm) / len(collected.visual_norm)
    token = {"gap_score_D": sum(collected.gap) / len(collected.gap),  # equal tokens per image
             "tacs": sum(collected.tacs) / len(collected.tacs),
             "visual_token_norm": visual_norm, "word_embedding_norm": word_table_norm,
             "norm_ratio": visual_norm / word_table_norm,
             "recalled_words": dict(recalled.most_common(10)), "candidate_words": len(words)}
    if truth is not None and grid is not None:
        token["probe"] = probe_accuracy(collected, pairs, truth, words, groups, grid[2])
    return {"pairs": len(pairs), "captions_truncated": collected.truncated,
            "eos": {"modality_gap": modality_gap(image_eos, text_eos), **retrieval_recall(image_eos, text_eos, ks)},
            "token": token}

