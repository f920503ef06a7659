"""Text-only stage-2 records (no image), as LLaVA-665K mixes in pure-text conversations: general facts
about colours, shapes, numbers and counting that need no picture. Every answer is computed, not typed."""

from __future__ import annotations

import random

from vlalign.data.shapes.language import NUMBER_WORDS, capitalize, join_phrases, number_word, with_article
from vlalign.data.shapes.world import COLORS, SHAPES

PAINT_MIXES = (("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
               ("red", "white", "pink"))
SIDES = {"triangle": 3, "square": 4, "diamond": 4}


def _mixing(rng):
    a, b, result = rng.choice(PAINT_MIXES)
    if rng.random() < 0.5:
        a, b = b, a
    return f"What color do you get when you mix {a} and {b} paint?", f"Mixing {a} and {b} paint gives {result}."


def _sides(rng):
    shape = rng.choice(sorted(SIDES))
    return f"How many sides does {with_article(shape)} have?", \
        f"{capitalize(with_article(shape))} has {number_word(SIDES[shape])} sides."


def _no_corners(rng):
    other = rng.choice([s for s in SHAPES if s != "circle"])
    options = ["a circle", with_article(other)]
    rng.shuffle(options)
    return f"Which shape has no corners: {options[0]} or {options[1]}?", "A circle has no corners."


def _word_to_digit(rng):
    n = rng.randrange(len(NUMBER_WORDS))
    if rng.random() < 0.5:
        return f"Write the number {NUMBER_WORDS[n]} as a digit.", str(n)
    return f"Write {n} as a word.", NUMBER_WORDS[n]


def _addition(rng):
    a = rng.randint(0, 5)
    b = rng.randint(0, 10 - a)
    return f"What is {number_word(a)} plus {number_word(b)}?", f"{capitalize(number_word(a))} plus " \
        f"{number_word(b)} is {number_word(a + b)}."


def _count_list(rng):
    kind, pool = rng.choice((("colors", sorted(COLORS)), ("shapes", list(SHAPES))))
    items = rng.sample(pool, rng.randint(2, 5))
    return f"How many {kind} are named in this list: {', '.join(items)}?", \
        f"There are {number_word(len(items))} {kind} in the list."


def _color_or_shape(rng):
    if rng.random() < 0.5:
        color = rng.choice(sorted(COLORS))
        return f"Is {color} a color or a shape?", f"{capitalize(color)} is a color."
    shape = rng.choice(SHAPES)
    return f"Is {with_article(shape)} a color or a shape?", f"{capitalize(with_article(shape))} is a shape."


def _name_shapes(rng):
    count = rng.randint(2, 4)
    chosen = rng.sample(list(SHAPES), count)
    return f"Name {number_word(count)} simple geometric shapes.", capitalize(join_phrases(chosen)) + "."


TEXT_QUESTIONS = (_mixing, _sides, _no_corners, _word_to_digit, _addition, _count_list, _color_or_shape,
                  _name_shapes)


def text_only_records(count: int, rng: random.Random, prefix: str = "text") -> list[dict]:
    """`count` records of 1-2 turns each, ids `{prefix}-{index:06d}`."""
    records = []
    for index in range(count):
        conversations = []
        for ask in rng.sample(TEXT_QUESTIONS, rng.randint(1, 2)):
            question, answer = ask(rng)
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        records.append({"id": f"{prefix}-{index:06d}", "conversations": conversations})
    return records
