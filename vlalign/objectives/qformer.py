"""Q-Former / X-Former pre-training (BLIP-2; X-Former stage 1): ITC, ITM, ITG (+ MAE reconstruction).

- ITC: each image's projected final queries vs the caption's projected [CLS] (text-only pass: BLIP-2's
  unimodal mask), similarity = best query, in-batch negatives gathered across ranks, learnable temperature.
- ITM: [final queries ; [CLS] caption] under the bidirectional mask, a 2-way head on every query slot,
  logits averaged over queries; per image one hard-negative caption and per caption one hard-negative
  image, drawn from the ITC similarities (positives, including identical captions, never drawn).
- ITG: [final queries ; [DEC] caption] under the multimodal causal mask, next-token loss on the caption.
- reconstruction (`xformer` only): the masked-patch MSE between the MAE decoder's prediction and the
  image's patches, from the tensors the connector returns when the forward pass asks for `reconstruction`.

`qformer` on an `xformer` connector is the paper's "no reconstruction" ablation (Table 3.2 row 1): the MAE
branch runs on the whole image and nothing asks it to reconstruct. No LLM pass runs for these terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from vlalign.distributed import gather_rows
from vlalign.errors import ConfigError
from vlalign.losses.functional import masked_patch_mse, qformer_itc, qformer_similarity, sample_hard_negatives
from vlalign.models.vlm import ForwardRequest
from vlalign.objectives.base import Objective, ObjectiveOptions, Requires, Terms, register_objective
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


def itm_pairs(similarity: torch.Tensor, captions: list[str],
              logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard negatives for ITM from a local [B, B] image-text cosine similarity, drawn from
    softmax(logit_scale x similarity) as BLIP-2 draws from softmax(sim / temp): with raw cosines in [-1, 1]
    the draw would be nearly uniform, i.e. random negatives instead of hard ones.

    Returns (rows with a negative, negative caption per such row, negative image per such row); rows whose
    caption equals every other caption in the batch have no negative and are left out of ITM.
    """
    same = torch.tensor([[a == b for b in captions] for a in captions], device=similarity.device)
    usable = (~same.all(dim=1)).nonzero().flatten()
    if len(usable) == 0:
        return usable, usable, usable
    logits = similarity.detach() * (logit_scale.detach() if torch.is_tensor(logit_scale) else logit_scale)
    negative_text = sample_hard_negatives(logits[usable], same[usable])
    negative_image = sample_hard_negatives(logits.T[usable], same.T[usable])
    return usable, negative_text, negative_image


@register_objective("qformer")
class QFormerObjective(Objective):
    Options = QFormerOptions
    requires = Requires(data_format="plain", connectors=("qformer", "xformer"),
                        why="it pre-trains a query connector on image-caption pairs")
    forward_request = ForwardRequest(run_llm=False)  # reads only the connector's output

    def __init__(self, options: QFormerOptions, model):
        super().__init__(options, model)
        self.logit_scale = LogitScale(options.temperature, max_scale=options.max_logit_scale)

    @classmethod
    def term_weights(cls, options: QFormerOptions) -> dict[str, float]:
        weights = {"itc": options.itc_weight, "itm": options.itm_weight, "itg": options.itg_weight}
        if "reconstruction" in cls.forward_request.connector_aux:
            weights["reconstruction"] = options.reconstruction_weight
        return {name: options.weight * value for name, value in weights.items()}

    @classmethod
    def sample_fields(cls, options: QFormerOptions) -> dict[str, dict]:
        return {"caption": {}}  # what the text branch reads

    def prepare(self, model, dataset, accelerator) -> None:
        if not any(p.requires_grad for p in model.multi_modal_projector.former.parameters()):
            raise ConfigError(f"{self.name}: the Q-Former is frozen (train.tune.connector or "
                              f"connector_options.freeze_former); nothing would learn")

    def forward(self, output, batch, model) -> Terms:
        queries = output.connector_aux.get("final_queries")
        if queries is None:
            raise ValueError(f"{self.name}: the batch has no images")
        if queries.shape[0] != len(batch):
            missing = [rid for rid, has in zip(batch.record_ids, batch.has_image.tolist()) if not has]
            raise ValueError(f"{self.name}: every record needs an image; records without one: {missing}")
        connector, captions = model.multi_modal_projector, batch.extras["caption"]
        ids, mask, cut = connector.tokenize(captions, queries.device)
        image_embeds, text_embeds = connector.itc_embeddings(queries, ids, mask)
        images_all, _ = gather_rows(image_embeds.float())
        texts_all, _ = gather_rows(text_embeds.float())
        scale = self.logit_scale()
        losses = {"itc": qformer_itc(images_all, texts_all, scale, self.options.itc_label_smoothing)}
        with torch.no_grad():
            similarity = qformer_similarity(image_embeds.float(), text_embeds.float())
        losses["itm"], itm_accuracy, itm_rows = self._itm(connector, queries, ids, mask, similarity, captions,
                                                          scale)
        losses["itg"] = self._itg(connector, queries, ids, mask)
        metrics = {"itc_logit_scale": float(scale.detach()), "itm_accuracy": itm_accuracy,
                   "itm_rows": float(itm_rows), "qformer_text_truncated": float(cut)}
        return Terms(losses, metrics)

    def _itm(self, connector, queries, ids, mask, similarity, captions, scale) -> tuple[torch.Tensor, float, int]:
        rows, negative_text, negative_image = itm_pairs(similarity, captions, scale)
        if len(rows) == 0:  # every caption identical: no negative exists; keep the graph connected
            return queries.sum() * 0.0, float("nan"), 0
        all_queries = torch.cat([queries, queries[rows], queries[negative_image]])
        all_ids = torch.cat([ids, ids[negative_text], ids[rows]])
        all_mask = torch.cat([mask, mask[negative_text], mask[rows]])
        states = connector.former.joint(all_queries, all_ids, all_mask, "bidirectional")
        logits = connector.itm_head(states[:, :queries.shape[1]]).mean(dim=1)
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        labels[:len(queries)] = 1
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
        return F.cross_entropy(logits.float(), labels), accuracy, len(rows)

    def _itg(self, connector, queries, ids, mask) -> torch.Tensor:
        decoder_ids = ids.clone()
        decoder_ids[:, 0] = connector.text_tokenizer.bos_token_id  # [DEC] replaces [CLS]
        states = connector.former.joint(queries, decoder_ids, mask, "multimodal_causal")
        text_states = states[:, queries.shape[1]:]
        predicting = mask[:, 1:].bool()  # logits only where a next token exists: the 30K-word head is costly
        logits = connector.former.lm_logits(text_states[:, :-1][predicting])
        return F.cross_entropy(logits.float(), decoder_ids[:, 1:][predicting],
                               label_smoothing=self.options.itg_label_smoothing)


@register_objective("xformer")
class XFormerObjective(QFormerObjective):
    """ITC + ITM + ITG on X-Former's final queries, plus the MAE reconstruction loss."""

    requires = Requires(data_format="plain", connectors=("xformer",),
                        why="its reconstruction term needs the X-Former's MAE branch")
    forward_request = ForwardRequest(run_llm=False, connector_aux=frozenset({"reconstruction"}))

    def forward(self, output, batch, model) -> Terms:
        terms = super().forward(output, batch, model)
        aux = output.connector_aux
        mask = aux["reconstruction_mask"]
        terms.losses["reconstruction"] = masked_patch_mse(aux["reconstruction_predicted"], aux["reconstruction_target"],
                                                          mask, model.multi_modal_projector.norm_pix_loss)
        terms.metrics["mae_masked_fraction"] = float(mask.mean())
        return terms
