"""Held-out test sets in the shapes of the usual benchmarks, on test images no training record uses.

Each QA record: `{id, image, question, answer, benchmark, type}` (question = the full prompt without an
<image> tag, ending in the answer-format suffix), plus `negative` (POPE), `pair` (MME), `choices`
(ScienceQA) and `novel` (compositional: does the question name a colour-shape pair never seen in
training). In-distribution sets never name a forbidden pair, as the training data never does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlalign.data.shapes.language import BRIEF_PROMPTS, HELD_OUT_CAPTION_TEMPLATES, caption
from vlalign.data.shapes.negatives import NEGATIVE_KINDS, WorldStats
from vlalign.data.shapes.questions import (QA, ask_color, ask_color_yes_no, ask_count, ask_count_yes_no,
                                           ask_exist, ask_multiple_choice, ask_relation, ask_relation_yes_no,
                                           ask_shape, ask_size, exist_qa, prompt, related_ordered_pairs,
                                           relations, unique_by)
from vlalign.data.shapes.world import Scene

GQA_KINDS = {"color": 2.0, "shape": 1.5, "count": 2.0, "size": 0.7, "relation": 1.5}
MME_KINDS = ("exist", "count", "color", "relation")
ATTEMPTS = 4


@dataclass(frozen=True)
class Entry:
    id: str  # e.g. "test-000012"
    image: str  # relative to the world root
    scene: Scene


def qa_record(record_id: str, entry: Entry, qa: QA, suffix: str, benchmark: str, **extra) -> dict:
    record = {"id": record_id, "image": entry.image, "question": prompt(qa, suffix), "answer": qa.answer,
              "benchmark": benchmark, "type": qa.kind}
    if qa.choices:
        record["choices"] = list(qa.choices)
    record.update(extra)
    return record


def _allowed(ask, forbidden: set) -> QA | None:
    """Calls `ask()` until its question names no forbidden pair (a few tries), else None."""
    for _ in range(ATTEMPTS):
        qa = ask()
        if qa is None or not forbidden.intersection(qa.targets):
            return qa
    return None


def build_pope(entries: list[Entry], rng: random.Random, stats: WorldStats, forbidden) -> list[dict]:
    """Per image and split one 'yes' (a present object) and one 'no' (an absent pair chosen the split's
    way), so each split is exactly balanced; the yes-objects rotate through the image's objects."""
    forbidden = set(forbidden)
    splits: dict[str, list[dict]] = {kind: [] for kind in NEGATIVE_KINDS}
    for entry in entries:
        present = list(entry.scene.objects)
        rng.shuffle(present)
        for index, kind in enumerate(NEGATIVE_KINDS):
            no = ask_exist(entry.scene, rng, False, kind, stats, exclude=forbidden)
            if no is None:
                continue
            yes = ask_exist(entry.scene, rng, True, kind, stats, target=present[index % len(present)])
            for qa in (yes, no):
                splits[kind].append(qa_record(f"pope-{kind}-{entry.id}-{qa.answer}", entry, qa, "yes_no", "pope",
                                              negative=kind))
    return [record for kind in NEGATIVE_KINDS for record in splits[kind]]


def _mme_pair(kind: str, scene: Scene, rng: random.Random, stats: WorldStats, forbidden: set):
    """(yes QA, no QA) about the same thing, or None when the scene cannot support the kind."""
    if kind == "exist":
        negative = rng.choice(NEGATIVE_KINDS)
        return (ask_exist(scene, rng, True, negative, stats),
                ask_exist(scene, rng, False, negative, stats, exclude=forbidden))
    if kind == "count":
        return ask_count_yes_no(scene, rng, True), ask_count_yes_no(scene, rng, False)
    if kind == "color":
        candidates = unique_by(scene, "shape")
        if not candidates:
            return None
        target = rng.choice(candidates)
        no = _allowed(lambda: ask_color_yes_no(scene, rng, False, target=target), forbidden)
        return ask_color_yes_no(scene, rng, True, target=target), no
    pairs = related_ordered_pairs(scene)
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    pair = (a, b, rng.choice(relations(a, b)))
    return ask_relation_yes_no(scene, rng, True, pair), ask_relation_yes_no(scene, rng, False, pair)


def build_mme(entries: list[Entry], rng: random.Random, stats: WorldStats, forbidden) -> list[dict]:
    """1-2 pairs per image; each pair asks one thing twice, once true and once false (for acc+)."""
    forbidden = set(forbidden)
    records = []
    for entry in entries:
        kinds = list(MME_KINDS)
        rng.shuffle(kinds)
        wanted, made = rng.randint(1, 2), 0
        for kind in kinds:
            if made == wanted:
                break
            pair = _mme_pair(kind, entry.scene, rng, stats, forbidden)
            if pair is None or None in pair:
                continue
            pair_id = f"mme-{entry.id}-{made}"
            records += [qa_record(f"{pair_id}-{qa.answer}", entry, qa, "yes_no_mme", "mme", pair=pair_id)
                        for qa in pair]
            made += 1
    return records


def _gqa_question(kind: str, scene: Scene, rng: random.Random) -> QA | None:
    ask = {"color": ask_color, "shape": ask_shape, "count": ask_count, "size": ask_size,
           "relation": ask_relation}[kind]
    return ask(scene, rng)


def build_gqa(entries: list[Entry], rng: random.Random, forbidden) -> list[dict]:
    """2-3 short-answer questions per image (colour, shape, count in digits, size, relation)."""
    forbidden = set(forbidden)
    records = []
    for entry in entries:
        kinds = list(GQA_KINDS)
        wanted = rng.randint(2, 3)
        made = 0
        while kinds and made < wanted:
            kind = rng.choices(kinds, weights=[GQA_KINDS[k] for k in kinds])[0]
            kinds.remove(kind)
            qa = _allowed(lambda: _gqa_question(kind, entry.scene, rng), forbidden)
            if qa is not None:
                records.append(qa_record(f"gqa-{entry.id}-{made}", entry, qa, "short", "gqa"))
                made += 1
    return records


def build_sqa(entries: list[Entry], rng: random.Random, forbidden) -> list[dict]:
    """One lettered multiple-choice question per image (3-4 options)."""
    forbidden = set(forbidden)
    records = []
    for entry in entries:
        qa = _allowed(lambda: ask_multiple_choice(entry.scene, rng), forbidden)
        if qa is not None:
            records.append(qa_record(f"sqa-{entry.id}", entry, qa, "multiple_choice", "sqa"))
    return records


def build_captions(entries: list[Entry], rng: random.Random, templates, prefix: str) -> list[dict]:
    """One caption per image as LLaVA JSON (like stage 1), with one fixed request for easy comparison."""
    return [{"id": f"{prefix}-{entry.id}", "image": entry.image, "conversations": [
        {"from": "human", "value": f"<image>\n{BRIEF_PROMPTS[0]}"},
        {"from": "gpt", "value": caption(entry.scene, rng, templates)}]} for entry in entries]


def build_compositional_gqa(entries: list[Entry], rng: random.Random, stats: WorldStats, forbidden) -> list[dict]:
    """Per image: an attribute question about a novel-pair object, an existence question (alternately a
    'yes' about that object and a 'no' about an absent forbidden pair), and sometimes a general one."""
    forbidden = set(forbidden)
    records = []
    for position, entry in enumerate(entries):
        scene = entry.scene
        novel = [obj for obj in scene.objects if obj.combo in forbidden]
        if not novel:
            raise ValueError(f"compositional image {entry.id} shows no forbidden pair")
        target = rng.choice(novel)
        attribute = [qa for qa in (ask_color(scene, rng, target), ask_shape(scene, rng, target)) if qa is not None]
        questions = [rng.choice(attribute) if attribute else ask_size(scene, rng, target)]
        absent = sorted(forbidden - set(scene.combos()))
        if position % 2 == 0 or not absent:
            questions.append(exist_qa(target.combo, True))
        else:
            questions.append(exist_qa(rng.choice(absent), False))
        if rng.random() < 0.5:
            extra = _gqa_question(rng.choice(("count", "relation")), scene, rng)
            if extra is not None:
                questions.append(extra)
        records += [qa_record(f"compositional-gqa-{entry.id}-{index}", entry, qa, "short", "gqa",
                              novel=bool(forbidden.intersection(qa.targets)))
                    for index, qa in enumerate(questions)]
    return records


def build_heldout_captions(entries: list[Entry], rng: random.Random, prefix: str) -> list[dict]:
    return build_captions(entries, rng, HELD_OUT_CAPTION_TEMPLATES, prefix)
