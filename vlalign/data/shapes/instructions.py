"""Training records: stage-1 captions (LCS-558K style) and stage-2 multi-turn instructions (LLaVA-665K
style) on the training images.

A stage-2 conversation has 2-4 turns of mixed kinds. Short-answer turns carry the test sets' format
suffixes (single word / yes-no / option letter), the other turns are long-form sentences, so instruction
tuning teaches both. Yes/no answers are kept exactly balanced over the whole set. No turn names a
forbidden colour-shape pair: not even as a 'no', which would teach the model that the pair never exists.
"""

from __future__ import annotations

import random

from vlalign.data.shapes.language import BRIEF_PROMPTS, DETAIL_PROMPTS, caption, detailed_caption
from vlalign.data.shapes.negatives import NEGATIVE_KINDS, WorldStats
from vlalign.data.shapes.questions import (QA, ask_color, ask_color_yes_no, ask_count, ask_count_yes_no,
                                           ask_exist, ask_multiple_choice, ask_relation, ask_relation_yes_no,
                                           ask_shape, ask_size, ask_where, prompt)
from vlalign.data.shapes.world import Scene

# Turn kinds and how often they are drawn (without replacement within one conversation).
TURN_WEIGHTS = {"color": 2.0, "shape": 1.5, "count": 2.0, "size": 0.7, "relation": 1.2, "where": 0.8,
                "exist": 2.0, "relation_yes_no": 1.2, "color_yes_no": 1.0, "count_yes_no": 0.5,
                "multiple_choice": 1.5, "describe": 1.0, "describe_detail": 0.6}
SHORT_FORM_SHARE = 0.7  # share of answerable-in-a-word turns asked with a format suffix
QA_ATTEMPTS = 4  # redraws of one question kind before trying another (e.g. when it named a forbidden pair)


class YesNoBalancer:
    """Hands out the next yes/no answer so that the two stay exactly balanced (ties: a coin flip)."""

    def __init__(self):
        self.counts = {True: 0, False: 0}

    def next(self, rng: random.Random) -> bool:
        if self.counts[True] != self.counts[False]:
            return self.counts[True] < self.counts[False]
        return rng.random() < 0.5

    def record(self, answer: bool) -> None:
        self.counts[answer] += 1


def stage1_record(record_id: str, image: str, scene: Scene, rng: random.Random) -> dict:
    request = rng.choice(BRIEF_PROMPTS)
    human = f"<image>\n{request}" if rng.random() < 0.5 else f"{request}\n<image>"
    return {"id": record_id, "image": image, "conversations": [
        {"from": "human", "value": human}, {"from": "gpt", "value": caption(scene, rng)}]}


def _ask(kind: str, scene: Scene, rng: random.Random, stats: WorldStats, forbidden: set,
         balancer: YesNoBalancer) -> QA | None:
    want = balancer.next(rng)
    if kind == "exist":
        return ask_exist(scene, rng, want, rng.choice(NEGATIVE_KINDS), stats, exclude=forbidden)
    if kind.endswith("yes_no"):
        ask = {"relation_yes_no": ask_relation_yes_no, "color_yes_no": ask_color_yes_no,
               "count_yes_no": ask_count_yes_no}[kind]
        return ask(scene, rng, want)
    ask = {"color": ask_color, "shape": ask_shape, "count": ask_count, "size": ask_size,
           "relation": ask_relation, "where": ask_where, "multiple_choice": ask_multiple_choice}[kind]
    return ask(scene, rng)


def _turn(kind: str, scene: Scene, rng: random.Random, stats: WorldStats, forbidden: set,
          balancer: YesNoBalancer, asked: set) -> tuple[str, str] | None:
    """(human text, gpt text) for one turn, or None when this scene cannot support the kind.
    `asked` holds the conversation's earlier questions: none is asked twice (e.g. as MC after short)."""
    if kind == "describe":
        return rng.choice(BRIEF_PROMPTS), caption(scene, rng)
    if kind == "describe_detail":
        return rng.choice(DETAIL_PROMPTS), detailed_caption(scene, rng)
    for _ in range(QA_ATTEMPTS):
        qa = _ask(kind, scene, rng, stats, forbidden, balancer)
        if qa is None:
            return None
        if not forbidden.intersection(qa.targets) and qa.question not in asked:
            break
    else:
        return None
    asked.add(qa.question)
    if qa.form == "yes_no":
        balancer.record(qa.answer == "yes")
    if qa.form == "multiple_choice":
        return prompt(qa, "multiple_choice"), qa.answer
    if rng.random() < SHORT_FORM_SHARE:
        suffix = rng.choice(("yes_no", "yes_no_mme")) if qa.form == "yes_no" else "short"
        return prompt(qa, suffix), qa.answer
    return prompt(qa), qa.long_answer


def stage2_record(record_id: str, image: str, scene: Scene, rng: random.Random, stats: WorldStats,
                  forbidden, balancer: YesNoBalancer) -> dict:
    forbidden = {tuple(combo) for combo in forbidden}
    wanted = rng.randint(2, 4)
    kinds = list(TURN_WEIGHTS)
    turns: list[tuple[str, str]] = []
    asked: set[str] = set()
    while kinds and len(turns) < wanted:
        kind = rng.choices(kinds, weights=[TURN_WEIGHTS[k] for k in kinds])[0]
        kinds.remove(kind)
        turn = _turn(kind, scene, rng, stats, forbidden, balancer, asked)
        if turn is not None:
            turns.append(turn)
    first_question = turns[0][0]
    turns[0] = (f"<image>\n{first_question}" if rng.random() < 0.9 else f"{first_question}\n<image>", turns[0][1])
    conversations = []
    for question, answer in turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image, "conversations": conversations}
