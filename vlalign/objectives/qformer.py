"""Q-Former / X-Former pre-training (BLIP-2; X-Former stage 1): ITC, ITM, ITG (+ MAE reconstruction).

- ITC: each image's projected final queries vs the caption's projected [CLS] (text-only pass: BLIP-2's
  unimodal mask), similarity = best query, in-batch negatives gathered across ranks, learnable temperature.
- ITM: [queries ; [CLS] caption] under the bidirectional mask, a 2-way head on every query slot, logits
  averaged over queries; per image one hard-negative caption and per caption one hard-negative image, drawn
  from softmax(logit scale x ITC similarity) over the global batch (positives, including identical captions,
  never drawn); negative images from other ranks carry their gradient back (LAVIS' all_gather_with_grad).
- ITG: [queries ; [DEC] caption] under the multimodal causal mask, next-token loss on the caption.
- reconstruction (`xformer` only): the masked-patch MSE between the MAE decoder's prediction and the
  image's patches, from the tensors the connector returns when the forward pass asks for `reconstruction`.

Which queries ITM and ITG see (`itm_itg_queries`):
- `final`: the final queries (after X-Former's MAE fusion) fill the query slots of one pass through the layers
  without cross-attention, so all three terms train exactly what the LLM receives. X-Former sec. 2.3: "The
  enhanced queries are optimized for ITC, ITM, and ITG".
- `blip2`: BLIP-2's own passes (LAVIS' Blip2Qformer): ITM re-runs the learnable queries with cross-attention to
  each pair's image features; ITG reads the query pass's cached per-layer states (its keys/values).
- `auto` (default): `final` on the xformer connector (the X-Former paper's description), `blip2` on the qformer
  connector (BLIP-2's).

`qformer` on an `xformer` connector is the paper's "no reconstruction" ablation (Table 3.2 row 1): the MAE
branch runs on the whole image and nothing asks it to reconstruct. No LLM pass runs for these terms.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlalign.distributed import gather_objects, gather_rows, gather_rows_with_grad
from vlalign.errors import ConfigError
from vlalign.losses.functional import masked_patch_mse, qformer_itc, qformer_similarity, sample_hard_negatives
from vlalign.models.connectors.query import XFormerConnector
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
    itm_itg_queries: Literal["auto", "final", "blip2"] = "auto"  # see the module docstring


def itm_itg_mode(requested: str, connector) -> str:
    """`final` or `blip2`; `auto` follows the paper of the connector (X-Former: final, BLIP-2: blip2)."""
    if requested != "auto":
        return requested
    return "final" if isinstance(connector, XFormerConnector) else "blip2"


def itm_pairs(similarity_i2t: torch.Tensor, similarity_t2i: torch.Tensor, captions: list[str],
              world_captions: list[str], logit_scale: torch.Tensor | float,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard negatives for ITM. similarity_i2t[i, j]: local image i vs text j of the global batch; similarity_t2i
    [i, j]: local text i vs global image j (cosines, [b, N]). Drawn from softmax(logit_scale x similarity) as
    BLIP-2 draws from softmax(sim / temp): with raw cosines in [-1, 1] the draw would be nearly uniform, i.e.
    random negatives instead of hard ones.

    Returns (local rows with a negative, global index of the negative caption per such row, global index of
    the negative image per such row); rows whose caption equals every caption of the global batch have no
    negative and are left out of ITM.
    """
    same = torch.tensor([[a == b for b in world_captions] for a in captions], device=similarity_i2t.device)
    usable = (~same.all(dim=1)).nonzero().flatten()
    if len(usable) == 0:
        return usable, usable, usable
    scale = logit_scale.detach() if torch.is_tensor(logit_scale) else logit_scale
    negative_text = sample_hard_negatives(similarity_i2t.detach()[usable] * scale, same[usable])
    negative_image = sample_hard_negatives(similarity_t2i.detach()[usable] * scale, same[usable])
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
        self.mode = itm_itg_mode(options.itm_itg_queries, model.multi_modal_projector)
        if self.mode == "blip2":  # BLIP-2's passes read the image features and the query pass's layer states
            wanted = type(self).forward_request
            self.forward_request = ForwardRequest(run_llm=False,
                                                  connector_aux=wanted.connector_aux | {"query_pass"})

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
        aux = output.connector_aux
        queries = aux.get("final_queries")
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
        with torch.no_grad():  # local images vs global texts, local texts vs global images
            similarity_i2t = qformer_similarity(image_embeds.float(), texts_all)
            similarity_t2i = qformer_similarity(images_all, text_embeds.float()).T
        losses["itm"], itm_metrics = self._itm(connector, aux, captions, similarity_i2t, similarity_t2i, scale)
        losses["itg"] = self._itg(connector, aux, ids, mask)
        metrics = {"itc_logit_scale": float(scale.detach()), **itm_metrics, "qformer_text_truncated": float(cut)}
        return Terms(losses, metrics)

    def _itm(self, connector, aux, captions, similarity_i2t, similarity_t2i,
             scale) -> tuple[torch.Tensor, dict[str, float]]:
        # The image side of a pair: the final queries, or (blip2) the image features the queries cross-attend.
        images = aux["final_queries"] if self.mode == "final" else aux["vision_features"]
        world_images, offset = gather_rows_with_grad(images)
        world_captions = gather_objects(captions)
        rows, negative_text, negative_image = itm_pairs(similarity_i2t, similarity_t2i, captions, world_captions,
                                                        scale)
        if len(rows) == 0:  # every caption identical: no negative exists; the `* 0` keeps the gather's
            # backward (a collective every rank must join) and the graph connected
            return world_images.sum() * 0.0, {"itm_accuracy": float("nan"), "itm_rows": 0.0,
                                              "itm_remote_negatives": float("nan")}
        world_ids, world_mask, _ = connector.tokenize(world_captions, images.device)
        local = slice(offset, offset + len(captions))
        pair_images = torch.cat([images, images[rows], world_images[negative_image]])
        pair_ids = torch.cat([world_ids[local], world_ids[negative_text], world_ids[local][rows]])
        pair_mask = torch.cat([world_mask[local], world_mask[negative_text], world_mask[local][rows]])
        former = connector.former
        if self.mode == "final":
            states = former.joint(pair_images, pair_ids, pair_mask, "bidirectional")
        else:
            states = former.joint(former.initial_queries(len(pair_images)), pair_ids, pair_mask, "bidirectional",
                                  image_features=pair_images)
        logits = connector.itm_head(states[:, :former.num_queries]).mean(dim=1)
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        labels[:len(captions)] = 1
        drawn = torch.cat([negative_text, negative_image])
        remote = ((drawn < offset) | (drawn >= offset + len(captions))).float().mean()
        metrics = {"itm_accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
                   "itm_rows": float(len(rows)), "itm_remote_negatives": float(remote)}
        return F.cross_entropy(logits.float(), labels), metrics

    def _itg(self, connector, aux, ids, mask) -> torch.Tensor:
        decoder_ids = ids.clone()
        decoder_ids[:, 0] = connector.text_tokenizer.bos_token_id  # [DEC] replaces [CLS]
        if self.mode == "final":
            queries = aux["final_queries"]
            text_states = connector.former.joint(queries, decoder_ids, mask, "multimodal_causal")[:, queries.shape[1]:]
        else:
            text_states = connector.former.decode_text(aux["query_layer_inputs"], decoder_ids, mask)
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
