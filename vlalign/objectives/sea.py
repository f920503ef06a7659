"""SEA: token-level supervised embedding alignment.

Offline (`vlalign label-patches`, vlalign.dual_encoder.labeller): a CLIP-like dual encoder labels every
patch with its top-n words by cosine similarity, negatives dropped (Eqs. 4-6, vlalign.labels.topn).
Online (objective `sea`), per step:
  1. per image, at most one patch per k x k window of the visual-token grid, among patches that have a
     label (Sec. 4.2, "localized sampling"); a patch without any label is never drawn;
  2. one label per drawn patch, with probability score / sum(scores) (Eq. 7);
  3. over the global batch (gathered across ranks), one patch per distinct label, chosen at random;
  4. label feature = mean of the frozen LLM input-embedding rows of the word's tokens (Eq. 8);
  5. loss = symmetric InfoNCE between projected visual tokens and label features, learnable
     temperature (Eq. 9, `functional.info_nce`); total = generative + lambda x this (Eq. 11).

Randomness is a pure function of (seed, the batch): the per-rank draws are seeded from the batch's image
keys and dataset positions, the dedup from the gathered label ids. A resumed run, and every rank, so makes
exactly the draws an uninterrupted run makes, with no sampler state to checkpoint.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from pydantic import Field

from vlalign.distributed import gather_rows, rank
from vlalign.errors import ConfigError, DataError
from vlalign.labels.cache import LabelCache
from vlalign.labels.grid import grid_mapping, map_labels
from vlalign.losses.functional import info_nce
from vlalign.objectives.base import Objective, ObjectiveOptions, Requires, Terms, register_objective
from vlalign.objectives.temperature import LogitScale


def sample_window_patches(has_label: torch.Tensor, window: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """has_label [I, R, C] bool -> (image [n], cell [n] = row * C + col): per image, one patch drawn uniformly
    among the labelled patches of each window x window window (edge windows are smaller); a window without
    a labelled patch gives none."""
    images, rows, cols = has_label.shape
    keys = torch.rand((images, rows, cols), generator=generator)
    keys = keys.masked_fill(~has_label.cpu(), -1.0)  # a random key per patch; the window's largest wins
    keys = F.pad(keys, (0, -cols % window, 0, -rows % window), value=-1.0)
    grid_rows, grid_cols = keys.shape[1] // window, keys.shape[2] // window
    blocks = keys.reshape(images, grid_rows, window, grid_cols, window).permute(0, 1, 3, 2, 4)
    best, where = blocks.reshape(images, grid_rows, grid_cols, window * window).max(dim=-1)
    image, window_row, window_col = (best >= 0).nonzero(as_tuple=True)
    local = where[image, window_row, window_col]
    row, col = window_row * window + local // window, window_col * window + local % window
    return image, row * cols + col


def sample_labels(indices: torch.Tensor, scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[n, top_n] labels of n patches -> [n] word ids, each drawn with probability score / sum (Eq. 7).

    Only valid labels (index >= 0) can be drawn; a patch whose valid labels all score exactly 0 draws
    uniformly among them. Every row needs at least one valid label.
    """
    valid = indices >= 0
    if not valid.any(dim=1).all():
        raise ValueError("sample_labels: a patch without any valid label was passed (filter them first)")
    weights = scores.float().clamp(min=0.0) * valid
    flat = weights.sum(dim=1) <= 0
    weights[flat] = valid[flat].float()
    choice = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
    return indices.cpu().gather(1, choice[:, None]).squeeze(1)


def dedup_labels(label_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Positions to keep, ascending: one uniformly chosen position per distinct label (Sec. 4.2: two patches
    with the same label in one batch would be each other's false negatives)."""
    count = label_ids.shape[0]
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.randperm(count, generator=generator)
    _, group = torch.unique(label_ids.cpu()[order], return_inverse=True)
    first = torch.full((int(group.max()) + 1,), count, dtype=torch.long)
    first = first.scatter_reduce(0, group, torch.arange(count), reduce="amin")
    return order[first].sort().values


def word_token_ids(tokenizer, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each word's LLM token ids as it appears mid-sentence (leading space, as
    `eval.alignment_run.word_embedding_table` embeds it) -> (ids [W, M], mask [W, M])."""
    encoded = tokenizer([" " + word for word in words], add_special_tokens=False)["input_ids"]
    empty = [word for word, ids in zip(words, encoded) if not ids]
    if empty:
        raise ConfigError(f"SEA label word(s) {empty[:5]} tokenize to nothing with the LLM's tokenizer")
    width = max(len(ids) for ids in encoded)
    ids = torch.zeros((len(words), width), dtype=torch.long)
    mask = torch.zeros((len(words), width), dtype=torch.bool)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = True
    return ids, mask


def _seed(*parts) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return int(digest[:15], 16)


class SeaOptions(ObjectiveOptions):
    # lambda of Eq. 11. SEA states no value (Sec. 5.1 gives n = 10, the 2x2 window, a learnable
    # temperature); 1.0 weighs the terms equally, as Ak et al. and CG-VLM do for theirs.
    weight: float = Field(1.0, ge=0)
    labels: str  # the folder `vlalign label-patches --out` wrote
    window: int = Field(2, ge=1)  # k of the k x k sampling window (Sec. 5.1: 2x2)
    temperature: float = Field(0.07, gt=0)  # initial tau; CLIP's init, learnable, scale clamped at max
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0
    seed: int = 0


@register_objective("sea")
class Sea(Objective):
    Options = SeaOptions
    requires = Requires(connector_kind="patch", why="SEA aligns visual tokens that sit on the patch grid")

    @classmethod
    def sample_fields(cls, options: SeaOptions) -> dict[str, dict]:
        return {"image_key": {}, "index": {}}  # labels are looked up by image; draws are seeded by both

    def __init__(self, options: SeaOptions, model):
        super().__init__(options, model)
        grid = model.token_grid()
        if grid is None:
            raise ConfigError(f"sea needs visual tokens on a patch grid; connector "
                              f"{model.config.connector!r} has none")
        self.prefix, self.token_grid = grid[0], (grid[1], grid[2])
        self.hidden_size = model.hidden_size
        self.logit_scale = LogitScale(options.temperature, max_scale=options.max_logit_scale,
                                      learnable=options.learnable_temperature)
        self.cache = None  # LabelCache, opened by prepare()
        self._word_ids: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, model, dataset, accelerator) -> None:
        self.open_labels(LabelCache(self.options.labels), model)
        try:
            grid_mapping(self.cache.grid, self.token_grid)
        except ConfigError as exc:
            raise ConfigError(f"sea: label cache {self.cache.folder}: {exc}") from None
        aspect = self.cache.manifest.get("image_aspect")
        if aspect != model.config.image_aspect:
            raise ConfigError(f"sea: label cache {self.cache.folder} was labelled with image_aspect {aspect!r} but "
                              f"the model uses model.image_aspect {model.config.image_aspect!r}: patches would "
                              f"not cover the same pixels; relabel with --image-aspect {model.config.image_aspect}")
        keys = [record.image_key for record in dataset.records if record.image_key is not None]
        missing = [key for key in dict.fromkeys(keys) if key not in self.cache]
        if missing:
            source = dataset.records[0].source_file
            raise DataError(f"{len(missing)} image(s) have no patch labels in the SEA cache {self.cache.folder}, "
                            f"e.g. {missing[:5]}; label this data set with `vlalign label-patches --data {source}`",
                            reason="missing_labels", file=source, field="image")

    def open_labels(self, cache, model) -> None:
        """Bind a label cache: its words are tokenized once with the LLM's tokenizer (they never change)."""
        self.cache = cache
        self._word_ids = {torch.device("cpu"): word_token_ids(model.tokenizer, cache.words)}

    def _token_ids(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._word_ids:
            ids, mask = self._word_ids[torch.device("cpu")]
            self._word_ids[device] = (ids.to(device), mask.to(device))
        return self._word_ids[device]

    def label_features(self, word_ids: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """[N] word ids -> [N, D] mean input-embedding row of each word's tokens (Eq. 8). Looked up per step
        from the live table, only for the sampled words: no [W, D] copy (2 GB for 64K words at D = 4096)
        and always on the embedding's device; detached, as the word embedding is frozen in SEA (Fig. 4)."""
        ids, mask = self._token_ids(embedding.device)
        ids, mask = ids[word_ids.to(embedding.device)], mask[word_ids.to(embedding.device)]
        rows = embedding.detach()[ids].float() * mask[..., None]
        return rows.sum(dim=1) / mask.sum(dim=1, keepdim=True)

    def _sample_local(self, output, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (visual tokens [n, D], word ids [n]) after window and label sampling."""
        visual = output.visual_tokens
        if visual is None:  # a text-only batch: no pairs here, but still join the gathers below
            return output.inputs_embeds.new_zeros((0, self.hidden_size)), torch.zeros(0, dtype=torch.long)
        keys = [key for key in batch.extras["image_key"] if key is not None]  # one per image, in pixel order
        if len(keys) != visual.shape[0]:
            raise RuntimeError(f"sea: {visual.shape[0]} images in the batch but {len(keys)} image keys")
        rows, cols = self.token_grid
        tokens = visual[:, self.prefix:]
        if tokens.shape[1] != rows * cols:
            raise RuntimeError(f"sea: {tokens.shape[1]} visual tokens per image after {self.prefix} prefix "
                               f"tokens, expected the {rows}x{cols} grid")
        try:
            indices, scores = self.cache.lookup(keys)
        except DataError as exc:
            image_records = [batch.record_ids[i] for i in batch.has_image.nonzero().flatten().tolist()]
            bad = next(i for i, key in enumerate(keys) if key not in self.cache)
            raise DataError(str(exc), reason="missing_labels", record_id=image_records[bad], field="image") from None
        indices, scores = map_labels(torch.from_numpy(indices), torch.from_numpy(scores), self.cache.grid,
                                     self.token_grid, keys[0])
        generator = torch.Generator().manual_seed(_seed(self.options.seed, rank(), keys, batch.extras["index"]))
        has_label = (indices >= 0).any(dim=-1).reshape(len(keys), rows, cols)
        image, cell = sample_window_patches(has_label, self.options.window, generator)
        words = sample_labels(indices[image, cell], scores[image, cell], generator)
        return tokens[image.to(tokens.device), cell.to(tokens.device)], words

    def forward(self, output, batch, model) -> Terms:
        if self.cache is None:
            raise RuntimeError("sea.prepare() was not called: no patch labels")
        scale = self.logit_scale()
        tokens, words = self._sample_local(output, batch)
        device = output.inputs_embeds.device
        all_tokens, _ = gather_rows(tokens.float())  # negatives from every rank; own rows keep gradient
        all_words, _ = gather_rows(words.to(device))
        # identical on every rank: the same gathered ids seed the same choice
        gathered = hashlib.sha256(all_words.cpu().numpy().tobytes()).hexdigest()
        keep = dedup_labels(all_words, torch.Generator().manual_seed(_seed(self.options.seed, gathered)))
        metrics = {f"{self.name}_pairs": float(len(keep)), f"{self.name}_sampled": float(len(all_words)),
                   f"{self.name}_logit_scale": float(scale.detach())}
        if len(keep) < 2:  # no negative: InfoNCE is undefined; a zero that keeps the graph (DDP, accumulation)
            zero = scale * 0.0 + (output.visual_tokens.sum() * 0.0 if output.visual_tokens is not None else 0.0)
            return Terms({self.name: zero}, metrics)
        keep = keep.to(device)
        features = self.label_features(all_words[keep], model.language_model.get_input_embeddings().weight)
        loss = info_nce(all_tokens[keep], features, scale)
        return Terms({self.name: loss}, metrics)
