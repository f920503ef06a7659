"""Question-answer pairs about a scene, shared by stage-2 instructions and the test sets.

Each `ask_*` returns a `QA` (or None when the scene cannot support that question without ambiguity):
the bare question, the short gold answer, a full-sentence answer for long-form turns, and the answer
format. `prompt()` adds the answer-format suffix, the same in training and in the test sets, as
LLaVA-1.5's mixture teaches the benchmarks' formats. Counts are answered with digits everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlalign.data.shapes.language import (AXIS, OPPOSITE, RELATION_PHRASES, RELATIONS, capitalize, name,
                                          number_word, plural, primary_relation, relation_sentence,
                                          relations, with_article)
from vlalign.data.shapes.negatives import WorldStats, absent_combo
from vlalign.data.shapes.world import COLORS, SHAPES, Scene, WorldObject

SUFFIXES = {
    "short": "\nAnswer the question using a single word or phrase.",
    # LLaVA-1.5 asks POPE (and its training mix the VQAv2 yes/no questions) with the short-answer instruction
    "yes_no": "\nAnswer the question using a single word or phrase.",
    "yes_no_mme": " Please answer yes or no.",  # MME's own wording, on the question's line
    "multiple_choice": "\nAnswer with the option's letter from the given choices directly.",
}
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class QA:
    kind: str  # color | shape | count | size | relation | exist
    question: str  # no suffix, no options
    answer: str  # the short gold answer ("yes"/"no", a word, digits, or an option letter)
    long_answer: str
    form: str = "short"  # short | yes_no | multiple_choice
    choices: tuple[str, ...] = ()
    targets: tuple[tuple[str, str], ...] = ()  # colour-shape pairs the question names


def prompt(qa: QA, suffix: str | None = None) -> str:
    """The full prompt: question, then lettered options (multiple choice), then the format suffix."""
    text = qa.question
    if qa.choices:
        text += "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(qa.choices))
    return text + (SUFFIXES[suffix] if suffix else "")


def _count_sentence(count: int, noun_singular: str, noun_plural: str) -> str:
    if count == 0:
        return f"There are no {noun_plural}."
    if count == 1:
        return f"There is one {noun_singular}."
    return f"There are {number_word(count)} {noun_plural}."


def unique_by(scene: Scene, attribute: str) -> list[WorldObject]:
    values = [getattr(obj, attribute) for obj in scene.objects]
    return [obj for obj in scene.objects if values.count(getattr(obj, attribute)) == 1]


def _pick(rng: random.Random, objects: list[WorldObject], target: WorldObject | None) -> WorldObject | None:
    if target is not None:
        return target if target in objects else None
    return rng.choice(objects) if objects else None


def ask_color(scene: Scene, rng: random.Random, target: WorldObject | None = None) -> QA | None:
    obj = _pick(rng, unique_by(scene, "shape"), target)  # "the star" must name one object
    if obj is None:
        return None
    return QA("color", f"What color is the {obj.shape}?", obj.color, f"The {obj.shape} is {obj.color}.",
              targets=(obj.combo,))


def ask_shape(scene: Scene, rng: random.Random, target: WorldObject | None = None) -> QA | None:
    obj = _pick(rng, unique_by(scene, "color"), target)
    if obj is None:
        return None
    return QA("shape", f"What shape is the {obj.color} object?", obj.shape,
              f"The {obj.color} object is {with_article(obj.shape)}.", targets=(obj.combo,))


def ask_count(scene: Scene, rng: random.Random) -> QA:
    variant = rng.choice(("all", "all", "color", "shape"))
    if variant == "color":
        present = sorted({obj.color for obj in scene.objects})
        color = rng.choice(present) if rng.random() < 0.8 else rng.choice(sorted(COLORS))
        count = scene.count(color=color)
        return QA("count", f"How many {color} shapes are there?", str(count),
                  _count_sentence(count, f"{color} shape", f"{color} shapes"))
    if variant == "shape":
        present = sorted({obj.shape for obj in scene.objects})
        shape = rng.choice(present) if rng.random() < 0.8 else rng.choice(SHAPES)
        count = scene.count(shape=shape)
        return QA("count", f"How many {plural(shape, 2)} are there?", str(count),
                  _count_sentence(count, shape, plural(shape, 2)))
    count = len(scene.objects)
    return QA("count", "How many shapes are there?", str(count), _count_sentence(count, "shape", "shapes"))


def ask_size(scene: Scene, rng: random.Random, target: WorldObject | None = None) -> QA:
    obj = target or rng.choice(scene.objects)
    options = "small or large" if rng.random() < 0.5 else "large or small"
    return QA("size", f"Is the {name(obj)} {options}?", obj.size, f"The {name(obj)} is {obj.size}.",
              targets=(obj.combo,))


def related_ordered_pairs(scene: Scene) -> list[tuple[WorldObject, WorldObject]]:
    return [(a, b) for a in scene.objects for b in scene.objects if a is not b and relations(a, b)]


def ask_relation(scene: Scene, rng: random.Random) -> QA | None:
    """'Is A to the left or to the right of B?' on an axis where the answer is unambiguous."""
    pairs = related_ordered_pairs(scene)
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    relation = rng.choice(relations(a, b))
    horizontal = AXIS[relation] == "horizontal"
    options = ["to the left", "to the right"] if horizontal else ["above", "below"]
    if rng.random() < 0.5:
        options.reverse()
    joint = f"{options[0]} or {options[1]}" + (" of" if horizontal else "")  # "to the left or to the right of"
    question = f"Is the {name(a)} {joint} the {name(b)}?"
    return QA("relation", question, relation, relation_sentence(a, b, relation), targets=(a.combo, b.combo))


def _where_pairs(scene: Scene) -> list[tuple[WorldObject, WorldObject]]:
    return [(a, b) for a, b in related_ordered_pairs(scene) if primary_relation(a, b)]


def ask_where(scene: Scene, rng: random.Random) -> QA | None:
    pairs = _where_pairs(scene)
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    relation = primary_relation(a, b)
    return QA("relation", f"Where is the {name(a)} relative to the {name(b)}?", relation,
              relation_sentence(a, b, relation), targets=(a.combo, b.combo))


def exist_qa(combo: tuple[str, str], present: bool) -> QA:
    phrase = f"{combo[0]} {combo[1]}"
    long_answer = (f"Yes, there is {with_article(phrase)} in the image." if present
                   else f"No, there is no {phrase} in the image.")
    return QA("exist", f"Is there {with_article(phrase)} in the image?", "yes" if present else "no", long_answer,
              form="yes_no", targets=(combo,))


def ask_exist(scene: Scene, rng: random.Random, want: bool, negative: str, stats: WorldStats,
              exclude=(), target: WorldObject | None = None) -> QA | None:
    """A 'yes' asks about `target` (default: a random present object); a 'no' about an absent pair chosen
    the `negative` way (see negatives.py)."""
    if want:
        return exist_qa((target or rng.choice(scene.objects)).combo, True)
    combo = absent_combo(scene, rng, negative, stats, exclude)
    return exist_qa(combo, False) if combo is not None else None


def ask_relation_yes_no(scene: Scene, rng: random.Random, want: bool,
                        pair: tuple[WorldObject, WorldObject, str] | None = None) -> QA | None:
    """'Is A to the left of B?': a 'no' asks the opposite of a relation that holds, so it is surely false.
    `pair` = (a, b, a relation that holds) fixes the subject, e.g. for the two questions of an MME pair."""
    if pair is None:
        pairs = related_ordered_pairs(scene)
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        pair = (a, b, rng.choice(relations(a, b)))
    a, b, relation = pair
    asked = relation if want else OPPOSITE[relation]
    truth = relation_sentence(a, b, relation)
    return QA("relation", f"Is the {name(a)} {RELATION_PHRASES[asked]} the {name(b)}?", "yes" if want else "no",
              ("Yes, t" if want else "No, t") + truth[1:], form="yes_no", targets=(a.combo, b.combo))


def ask_color_yes_no(scene: Scene, rng: random.Random, want: bool,
                     target: WorldObject | None = None) -> QA | None:
    obj = _pick(rng, unique_by(scene, "shape"), target)
    if obj is None:
        return None
    others_here = sorted({o.color for o in scene.objects if o.color != obj.color})
    if want:
        asked = obj.color
    elif others_here and rng.random() < 0.5:  # a colour seen elsewhere in the image: a binding test
        asked = rng.choice(others_here)
    else:
        asked = rng.choice([c for c in sorted(COLORS) if c != obj.color])
    long_answer = f"Yes, the {obj.shape} is {obj.color}." if want else f"No, the {obj.shape} is {obj.color}."
    return QA("color", f"Is the {obj.shape} {asked}?", "yes" if want else "no", long_answer, form="yes_no",
              targets=((asked, obj.shape),))


def ask_count_yes_no(scene: Scene, rng: random.Random, want: bool) -> QA:
    count = len(scene.objects)
    asked = count if want else rng.choice([m for m in (count - 1, count + 1, count + 2) if m >= 1])
    question = ("Is there exactly one shape in the image?" if asked == 1
                else f"Are there exactly {number_word(asked)} shapes in the image?")
    truth = _count_sentence(count, "shape", "shapes")
    return QA("count", question, "yes" if want else "no", ("Yes. " if want else "No. ") + truth, form="yes_no")


def _options(rng: random.Random, correct: str, preferred: list[str], pool: list[str], n: int) -> list[str]:
    """`correct` plus n-1 distractors, half of them (when possible) from `preferred` (the harder ones)."""
    preferred = [p for p in dict.fromkeys(preferred) if p != correct]
    rest = [p for p in pool if p != correct and p not in preferred]
    distractors = []
    while len(distractors) < n - 1 and (preferred or rest):
        source = preferred if preferred and (rng.random() < 0.5 or not rest) else rest
        distractors.append(source.pop(rng.randrange(len(source))))
    options = [correct] + distractors
    rng.shuffle(options)
    return options


def ask_multiple_choice(scene: Scene, rng: random.Random, n_choices: int | None = None) -> QA | None:
    """A ScienceQA-style lettered question: which shape / what colour / how many / where."""
    n = n_choices or rng.choice((3, 4, 4))
    variants = ["count"] + (["shape"] if unique_by(scene, "color") else []) \
        + (["color"] if unique_by(scene, "shape") else []) + (["relation"] if _where_pairs(scene) else [])
    variant = rng.choice(variants)
    if variant == "shape":
        obj = rng.choice(unique_by(scene, "color"))
        base = QA("shape", f"Which shape is {obj.color}?", obj.shape, "", targets=(obj.combo,))
        options = _options(rng, obj.shape, [o.shape for o in scene.objects], list(SHAPES), n)
    elif variant == "color":
        base = ask_color(scene, rng)
        options = _options(rng, base.answer, [o.color for o in scene.objects], sorted(COLORS), n)
    elif variant == "relation":
        base = ask_where(scene, rng)
        options = _options(rng, base.answer, [], list(RELATIONS), n)
    else:
        count = len(scene.objects)
        base = QA("count", "How many shapes are there?", str(count), "")
        near = [str(m) for m in range(max(0, count - 3), count + 4) if m != count]
        options = _options(rng, str(count), [], near, n)
    letter = LETTERS[options.index(base.answer)]
    return QA(base.kind, base.question, letter, f"{letter}. {capitalize(base.answer)}", form="multiple_choice",
              choices=tuple(options), targets=base.targets)
