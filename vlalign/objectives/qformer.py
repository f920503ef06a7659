"""Q-Former / X-Former pre-training (BLIP-2; seed 002 stage 1): ITC, ITM, ITG (+ MAE reconstruction).

- ITC: each image's projected final queries vs the caption's projected [CLS] (text-only pass: BLIP-2's
  unimodal mask), similarity = best query, in-batch negatives gathered across ranks, learnable temperature.
- ITM: [final queries ; [CLS] caption] under the bidirectional mask, a 2-way head on every query slot,
  logits averaged over queries; per image one hard-negative caption and per caption one hard-negative
  image, drawn from the ITC similarities (positives, including identical captions, never drawn).
- ITG: [final queries ; [DEC] caption] under the multimodal causal mask, next-token loss on the caption.
- reconstruction (`xformer` only): the MAE decoder's masked-patch MSE, computed by the connector.

`qformer` on an `xformer` connector is the paper's "no reconstruction" ablation (Table 3.2 row 1): the MAE
branch runs on the whole image and nothing asks it to reconstruct. No LLM pass runs for these terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from vlalign.distributed import gather_rows
from vlalign.errors import ConfigError
from vlalign.objectives.base import Objective, ObjectiveOptions, Terms, register_objective
from vlalign.objectives.functional import qformer_itc, qformer_similarity, sample_hard_negatives
from vlalign.objectives.temperature import LogitScale


class QFormerOptions(ObjectiveOptions):
    itc_weight: float = 1.0  # BLIP-2 / X-Former sum the terms with equal weights
    itm_weight: float = 1.0
    itg_weight: float = 1.0
    reconstruction_weight: float = 1.0  # xformer only
    temperature: float = Field(0.07, gt=0)  # BLIP-2's init; learnable
    max_logit_scale: float = 100.0
    itc_label_smoothing: float = Field(0.1, ge=0, lt=1)  # LAVIS' BLIP-2 ITC uses 0.1
    itg_label_smoothing: float = Field(0.1, ge=0, lt=1)  # and 0.1 for ITG


def _query_connector(model, name: str):
    from vlalign.models.query_connectors import QFormerConnector, XFormerConnector

    connector = model.multi_modal_projector
    wanted = XFormerConnector if name == "xformer" else QFormerConnector
    if not isinstance(connector, wanted):
        raise ConfigError(f"objective {name!r} trains a query connector: set model.connector: "
                          f"{'xformer' if name == 'xformer' else 'qformer (or xformer)'}, "
                          f"not {model.config.connector!r}")
    return connector


def itm_pairs(similarity: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard negatives for ITM from a local [B, B] image-text similarity.

    Returns (rows with a negative, negative caption per such row, negative image per such row); rows whose
    caption equals every other caption in the batch have no negative and are left out of ITM.
    """
    same = torch.tensor([[a == b for b in captions] for a in captions], device=similarity.device)
    usable = (~same.all(dim=1)).nonzero().flatten()
    if len(usable) == 0:
        return usable, usable, usable
    negative_text = sample_hard_negatives(similarity[usable], same[usable])
    negative_image = sample_hard_negatives(similarity.T[usable], same.T[usable])
    return usable, negative_text, negative_image


@register_objective("qformer")
class QFormerObjective(Objective):
    Options = QFormerOptions
    needs_llm = False

    def __init__(self, options: QFormerOptions, model):
        super().__init__(options, model)
        # Kept outside the module tree: the connector's parameters belong to the model, not to the objectives.
        object.__setattr__(self, "connector", _query_connector(model, self.name))
        self.logit_scale = LogitScale(options.temperature, max_scale=options.max_logit_scale)

    @property
    def reconstructs(self) -> bool:
        return False

    def term_weights(self) -> dict[str, float]:
        o = self.options
        weights = {"itc": o.itc_weight, "itm": o.itm_weight, "itg": o.itg_weight}
        if self.reconstructs:
            weights["reconstruction"] = o.reconstruction_weight
        return {name: o.weight * value for name, value in weights.items()}

    def prepare(self, model, dataset, accelerator) -> None:
        if dataset.fmt != "plain":
            raise ConfigError(f"{self.name} pre-trains on image-caption pairs: it needs data.format: plain, "
                              f"got {dataset.fmt!r}")
        if not any(p.requires_grad for p in self.connector.former.parameters()):
            raise ConfigError(f"{self.name}: the Q-Former is frozen (train.tune.connector or "
                              f"connector_options.freeze_former); nothing would learn")
        self.connector.reconstruct = self.reconstructs

    def forward(self, output, batch) -> Terms:
        out = output.connector_output
        if out is None:
            raise ValueError(f"{self.name}: the batch has no images")
        queries = out.final_queries
        if queries.shape[0] != len(batch):
            missing = [rid for rid, has in zip(batch.record_ids, batch.has_image.tolist()) if not has]
            raise ValueError(f"{self.name}: every record needs an image; records without one: {missing}")
        connector = self.connector
        ids, mask, cut = connector.tokenize(batch.captions, queries.device)
        image_embeds, text_embeds = connector.itc_embeddings(queries, ids, mask)
        images_all, _ = gather_rows(image_embeds.float())
        texts_all, _ = gather_rows(text_embeds.float())
        scale = self.logit_scale()
        losses = {"itc": qformer_itc(images_all, texts_all, scale, self.options.itc_label_smoothing)}
        with torch.no_grad():
            similarity = qformer_similarity(image_embeds.float(), text_embeds.float())
        losses["itm"], itm_accuracy, itm_rows = self._itm(queries, ids, mask, similarity, batch.captions)
        losses["itg"] = self._itg(queries, ids, mask)
        metrics = {"itc_logit_scale": float(scale.detach()), "itm_accuracy": itm_accuracy,
                   "itm_rows": float(itm_rows), "qformer_text_truncated": float(cut)}
        if self.reconstructs:
            if out.reconstruction_loss is None:
                raise RuntimeError("xformer: the connector computed no reconstruction (prepare() not called, "
                                   "or the model is in eval mode)")
            losses["reconstruction"] = out.reconstruction_loss
            metrics["mae_masked_fraction"] = out.masked_fraction
        return Terms(losses, metrics)

    def _itm(self, queries, ids, mask, similarity, captions) -> tuple[torch.Tensor, float, int]:
        rows, negative_text, negative_image = itm_pairs(similarity, captions)
        if len(rows) == 0:  # every caption identical: no negative exists; keep the graph connected
            return queries.sum() * 0.0, float("nan"), 0
        all_queries = torch.cat([queries, queries[rows], queries[negative_image]])
        all_ids = torch.cat([ids, ids[negative_text], ids[rows]])
        all_mask = torch.cat([mask, mask[negative_text], mask[rows]])
        states = self.connector.former.joint(all_queries, all_ids, all_mask, "bidirectional")
        logits = self.connector.itm_head(states[:, :queries.shape[1]]).mean(dim=1)
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        labels[:len(queries)] = 1
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
        return F.cross_entropy(logits.float(), labels), accuracy, len(rows)

    def _itg(self, queries, ids, mask) -> torch.Tensor:
        decoder_ids = ids.clone()
        decoder_ids[:, 0] = self.connector.text_tokenizer.bos_token_id  # [DEC] replaces [CLS]
        states = self.connector.former.joint(queries, decoder_ids, mask, "multimodal_causal")
        text_states = states[:, queries.shape[1]:]
        predicting = mask[:, 1:].bool()  # logits only where a next token exists: the 30K-word head is costly
        logits = self.connector.former.lm_logits(text_states[:, :-1][predicting])
        return F.cross_entropy(logits.float(), decoder_ids[:, 1:][predicting],
                               label_smoothing=self.options.itg_label_smoothing)


@register_objective("xformer")
class XFormerObjective(QFormerObjective):
    """ITC + ITM + ITG on X-Former's final queries, plus the MAE reconstruction loss."""

    @property
    def reconstructs(self) -> bool:
        return True
