"""Absent colour-shape pairs to ask about ("Is there a green star?" -> no), chosen the ways POPE does.

- random: uniformly among the absent pairs;
- popular: among the absent pairs most frequent in the training images;
- adversarial: among the absent pairs that share a colour and/or a shape with a present object (the
  binding errors a model makes: a red circle and a blue square, asked about a red square), ties broken by
  how often the pair co-occurs in training with the present ones.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from vlalign.data.shapes.world import ALL_COMBOS, Scene

NEGATIVE_KINDS = ("random", "popular", "adversarial")
TOP_K = 3  # choose among the top few, as POPE samples from its top-k lists


@dataclass
class WorldStats:
    """Counts over the training scenes; the only thing 'popular' and 'adversarial' look at."""

    combo_counts: Counter = field(default_factory=Counter)
    cooccurrence: Counter = field(default_factory=Counter)  # key: a sorted pair of colour-shape pairs

    @classmethod
    def from_scenes(cls, scenes: list[Scene]) -> "WorldStats":
        stats = cls()
        for scene in scenes:
            combos = sorted(scene.combos())
            stats.combo_counts.update(combos)
            for i, first in enumerate(combos):
                for second in combos[i + 1:]:
                    stats.cooccurrence[(first, second)] += 1
        return stats

    def cooccurs(self, combo, others) -> int:
        return sum(self.cooccurrence[tuple(sorted((combo, other)))] for other in others)

    def to_json(self, top: int = 10) -> list:
        ranked = sorted(self.combo_counts.items(), key=lambda item: (-item[1], item[0]))
        return [[color, shape, count] for (color, shape), count in ranked[:top]]


def absent_combo(scene: Scene, rng: random.Random, kind: str, stats: WorldStats,
                 exclude=()) -> tuple[str, str] | None:
    """An absent colour-shape pair chosen by `kind`, never one in `exclude`; None if none is left."""
    present = set(scene.combos())
    banned = present | {tuple(combo) for combo in exclude}
    candidates = [combo for combo in ALL_COMBOS if combo not in banned]  # ALL_COMBOS order: deterministic
    if not candidates:
        return None
    if kind == "random":
        return rng.choice(candidates)
    if kind == "popular":
        ranked = sorted(candidates, key=lambda c: (-stats.combo_counts[c], c))
        return rng.choice(ranked[:TOP_K])
    if kind == "adversarial":
        colors = {color for color, _ in present}
        shapes = {shape for _, shape in present}

        def confusability(combo):
            shared = (combo[0] in colors) + (combo[1] in shapes)
            return (-shared, -stats.cooccurs(combo, present), combo)

        ranked = sorted(candidates, key=confusability)
        return rng.choice(ranked[:TOP_K])
    raise ValueError(f"unknown negative kind {kind!r}; expected one of {NEGATIVE_KINDS}")
