"""Zero-shot image-text retrieval with a pre-trained Q-Former / X-Former (X-Former, Table 8 style).

Similarity is ITC's own: the best cosine over an image's projected queries against the caption's projected
[CLS]. TR@K (text retrieval) = image-to-text recall, IR@K = text-to-image recall; chance is K / N.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.data.build import image_transform_for
from vlalign.data.images import load_image
from vlalign.errors import ConfigError
from vlalign.losses.functional import qformer_similarity
from vlalign.losses.retrieval import recall_from_similarity
from vlalign.models.connectors import QFormerConnector


@torch.no_grad()
def query_retrieval(model, pairs: list, image_root: str | Path, batch_size: int = 32,
                    ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """`pairs`: eval.alignment_run.Pair records (image path relative to `image_root`, caption)."""
    connector = model.multi_modal_projector
    if not isinstance(connector, QFormerConnector):
        raise ConfigError(f"query retrieval needs a qformer / xformer connector, not {model.config.connector!r}")
    if len(pairs) < max(ks):
        raise ConfigError(f"query retrieval: {len(pairs)} pairs are fewer than K = {max(ks)}")
    device = next(connector.parameters()).device
    transform = image_transform_for(model)
    root = Path(image_root)
    image_side, text_side = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        pixels = torch.stack([transform(load_image(root / pair.image)) for pair in chunk]).to(device)
        final_queries = model.encode_images_with_aux(pixels).aux["final_queries"]
        ids, mask, _ = connector.tokenize([pair.caption for pair in chunk], device)
        images, texts = connector.itc_embeddings(final_queries, ids, mask)
        image_side.append(images.float().cpu())
        text_side.append(texts.float().cpu())
    similarity = qformer_similarity(torch.cat(image_side), torch.cat(text_side))
    recalls = recall_from_similarity(similarity, ks)
    named = {}
    for k in ks:
        named[f"TR@{k}"] = recalls[f"i2t@{k}"]
        named[f"IR@{k}"] = recalls[f"t2i@{k}"]
    return {**named, "pairs": len(pairs)}
