"""Contrastive alignment objectives: `eos_contrastive` (Ak et al.) and `cg_contrastive` (CG-VLM).

Both add a term to the generative loss (total = generative + weight x term) and own a learnable
temperature; both gather their embeddings across ranks so the negatives are the global batch.

`eos_contrastive`, image side: the sample layout puts the image's own EOS input in front of the caption
(see data.templates.tokenize_plain_with_image_eos), so the image embedding is read from the same forward
pass as the caption loss, at the cost of a few extra tokens per sequence instead of a second LLM pass.
Text side: the frozen LLM's caption embeddings, pre-extracted once per dataset (objectives.text_cache).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from vlalign.data.eos_layout import read_positions
from vlalign.data.templates import IGNORE_INDEX
from vlalign.distributed import gather_objects, gather_rows
from vlalign.errors import ConfigError
from vlalign.losses.functional import cg_contrastive
from vlalign.objectives.base import Objective, ObjectiveOptions, Requires, Terms, register_objective
from vlalign.objectives.pair_loss import PairLoss
from vlalign.objectives.temperature import LogitScale
from vlalign.objectives.text_cache import build_text_cache


class EosOptions(ObjectiveOptions):
    weight: float = 1.0  # Ak et al.: L_g + L_c with equal weights
    loss: Literal["infonce", "sigmoid"] = "infonce"
    prompt: bool = False  # Ak et al. sec. 3.4: "This sentence: ... means:" / "This {photo|image|picture}: ... means:"
    read: Literal["eos", "before_eos"] = "eos"  # which state is the embedding: the appended [EOS] (the paper)
    temperature: float = Field(0.07, gt=0)  # CLIP's init; learnable, scale clamped at max_logit_scale
    max_logit_scale: float = 100.0
    text_cache: str | None = None  # folder for pre-extracted caption embeddings (default: $VLALIGN_CACHE/eos_text)
    cache_batch_size: int = Field(32, ge=1)


# Stage-1 objectives: every sample has an image, so every rank joins every gather (a rank with a text-only
# batch skipping a collective would hang the others).
STAGE1_PAIRS = "it is a stage-1 alignment objective on image-caption pairs"


@register_objective("eos_contrastive")
class EosContrastive(Objective):
    Options = EosOptions
    # The caption embeddings are pre-extracted once from the frozen LLM (Ak et al., stage 1); a trainable
    # LLM would leave them stale.
    requires = Requires(data_format="plain", frozen_llm=True,
                        why=STAGE1_PAIRS + "; its caption embeddings come from the frozen stage-1 LLM")

    def __init__(self, options: EosOptions, model):
        super().__init__(options, model)
        self.pair_loss = PairLoss(options.loss, options.temperature, options.max_logit_scale)
        self.text_embeddings = None  # [N, D] memory map, row = dataset index; set by prepare()

    @classmethod
    def sample_fields(cls, options: EosOptions) -> dict[str, dict]:
        # the image-EOS position exists only in the plain_image_eos layout, which takes `prompt`
        return {"image_eos_position": {"prompt": options.prompt}, "index": {}}

    def prepare(self, model, dataset, accelerator) -> None:
        texts = [record.turns[-1].text.strip() for record in dataset.records]
        data_file = dataset.records[0].source_file if dataset.records else None
        if data_file is None:
            raise ConfigError("eos_contrastive: the training set is empty")
        with accelerator.main_process_first():  # rank 0 extracts; the others then find the cache complete
            self.text_embeddings = build_text_cache(
                model, texts, data_file, self.options.prompt, self.options.read, dataset.max_length,
                self.options.text_cache, self.options.cache_batch_size, progress=accelerator.is_main_process)

    def forward(self, output, batch, model) -> Terms:
        if self.text_embeddings is None:
            raise RuntimeError("eos_contrastive.prepare() was not called: no caption embeddings")
        rows, columns = batch.at_sample_positions(read_positions(batch.extras["image_eos_position"], self.options.read))
        image_side = output.hidden_states[rows, columns]
        text_side = torch.from_numpy(self.text_embeddings[batch.extras["index"]]).to(image_side.device, torch.float32)
        loss, logged = self.pair_loss(image_side, text_side)
        return Terms({self.name: loss}, {f"{self.name}_{key}": value for key, value in logged.items()})


class CgOptions(ObjectiveOptions):
    weight: float = 1.0  # alpha of CG-VLM Eq. 5 (the paper's default and best value)
    temperature: float = Field(0.07, gt=0)  # tau of Eq. 3 is learnable; CLIP's init
    max_logit_scale: float = 100.0


@register_objective("cg_contrastive")
class CgContrastive(Objective):
    """Mean-pooled projected visual tokens vs the caption's LLM input-embedding rows (CG-VLM Eq. 3-4).

    The caption is what the generative loss supervises in that sample (the stage-1 caption; in a chat
    sample the assistant turns), without the closing EOS / end-of-turn specials.
    """

    Options = CgOptions
    requires = Requires(data_format="plain", why=STAGE1_PAIRS)

    def __init__(self, options: CgOptions, model):
        super().__init__(options, model)
        self.logit_scale = LogitScale(options.temperature, max_scale=options.max_logit_scale)
        self.special_ids = sorted(set(model.tokenizer.all_special_ids))

    def forward(self, output, batch, model) -> Terms:
        if output.visual_tokens is None:
            raise ValueError("cg_contrastive: the batch has no images")
        image_samples = batch.has_image.nonzero().flatten()
        supervised = (batch.labels != IGNORE_INDEX) & ~torch.isin(
            batch.input_ids, torch.tensor(self.special_ids, device=batch.input_ids.device))
        owner = batch.token_samples()  # a packed row holds several samples: select each one's tokens
        captions = [supervised & (owner == sample) for sample in image_samples.tolist()]
        counts = [int(caption.sum()) for caption in captions]
        if 0 in counts:
            empty = [batch.record_ids[int(image_samples[i])] for i, count in enumerate(counts) if count == 0]
            raise ValueError(f"cg_contrastive: record(s) {empty} have no caption token (all-masked caption)")
        # Pool before gathering: [B, 1, D] travels between ranks instead of [B, Nv, D]; the mean is the same.
        pooled = output.visual_tokens.float().mean(dim=1, keepdim=True)
        width = max(gather_objects([max(counts)]))
        text = output.inputs_embeds.new_zeros((len(image_samples), width, output.inputs_embeds.shape[-1]))
        mask = torch.zeros((len(image_samples), width), dtype=torch.bool, device=text.device)
        for slot, caption in enumerate(captions):
            tokens = output.inputs_embeds[caption]
            text[slot, :len(tokens)] = tokens
            mask[slot, :len(tokens)] = True
        pooled_all, _ = gather_rows(pooled)
        text_all, _ = gather_rows(text.float())
        mask_all, _ = gather_rows(mask)
        scale = self.logit_scale()
        loss = cg_contrastive(pooled_all, text_all, mask_all, scale)
        return Terms({self.name: loss}, {f"{self.name}_logit_scale": float(scale.detach()),
                                         f"{self.name}_pairs": float(pooled_all.shape[0])})
