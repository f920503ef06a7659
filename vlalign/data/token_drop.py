"""Visual-token drop for stage 1 (FLIP's patch masking carried to the LLM's input, as the alignment survey
recommends, sec. 5.3): each image keeps a random subset of its visual tokens, in their original order, and
the placeholders of the dropped ones leave the sequence, so every step is shorter.

The draw is a function of (seed, record id, epoch) alone: every rank, DataLoader worker and resumed run
draws the same subset for the same sample, and a record sees a new subset each epoch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

from vlalign.data.templates import Tokenized


def kept_count(num_visual_tokens: int, share: float) -> int:
    return max(1, num_visual_tokens - int(share * num_visual_tokens))  # drops floor(share x N)


def kept_visual_tokens(num_visual_tokens: int, share: float, seed: int, record_id: str, epoch: int) -> list[int]:
    digest = hashlib.sha256(f"{seed}\0{record_id}\0{epoch}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return sorted(rng.sample(range(num_visual_tokens), kept_count(num_visual_tokens, share)))


def drop_visual_placeholders(tokens: Tokenized, image_token_id: int, keep: list[int],
                             num_visual_tokens: int) -> Tokenized:
    """The sample without the placeholders of the dropped visual tokens. Layout fields are token positions
    (e.g. the image-side EOS); those after the image run move left by the number dropped."""
    run = [i for i, token in enumerate(tokens.input_ids) if token == image_token_id]
    if len(run) != num_visual_tokens or run[-1] - run[0] + 1 != num_visual_tokens:
        raise ValueError(f"visual-token drop expects one run of {num_visual_tokens} image placeholders per "
                         f"sample, found {len(run)}")
    dropped = {run[0] + i for i in range(num_visual_tokens)} - {run[0] + i for i in keep}
    kept_positions = [i for i in range(len(tokens.input_ids)) if i not in dropped]
    removed = len(dropped)
    fields = {name: value - removed if isinstance(value, int) and value > run[-1] else value
              for name, value in tokens.layout_fields.items()}
    return replace(tokens, input_ids=[tokens.input_ids[i] for i in kept_positions],
                   labels=[tokens.labels[i] for i in kept_positions], layout_fields=fields)
