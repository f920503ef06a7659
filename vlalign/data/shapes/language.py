"""Words for scenes: number words, noun phrases, spatial relations and caption templates.

Relations come from bbox centres and are stated only when unambiguous: A is left of B when A's centre
lies left of B's whole box and B's centre lies right of A's whole box (likewise above/below). Captions
for training use `TRAIN_CAPTION_TEMPLATES`; `HELD_OUT_CAPTION_TEMPLATES` share no phrasing with them and
are used only by test sets, so a retrieval score on them is not template memorisation.
"""

from __future__ import annotations

import random
import string

from vlalign.data.shapes.world import Scene, WorldObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLURAL_SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                 "cross": "crosses", "diamond": "diamonds"}
BACKGROUND_WORDS = {"plain": "plain", "gradient": "gradient", "noise": "textured"}
RELATIONS = ("left", "right", "above", "below")
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
AXIS = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical"}
DOMINANCE = 2.0  # a diagonal pair has a single "where" answer only if one axis is this many times longer

TRAIN_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{Sized_list}.",
    "There {is_are} {count} {shape_noun}: {list}.",
    "There {is_are} {count} {shape_noun}: {sized_list}.",
    "An image of {list} on a {background} background.",
    "A picture showing {sized_list}.",
    "{List}. {relations}",
    "From left to right: {lr_list}.",
    "{Count} {shape_noun} on a {background} background: {list}.",
)
HELD_OUT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "In this picture we can see {sized_list}.",
    "The scene contains {count} {object_noun}, namely {list}.",
    "Visible here: {list}, set against a {background} backdrop.",
    "Looking at the image, one finds {list}. {relations}",
    "Going across from left to right, the image shows {lr_list}.",
)
# Wordings of LCS-558K's "describe briefly" requests (our own phrasings): the stage-1 human turns.
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.", "Give a short description of the picture.",
    "Write a brief caption for this image.", "Summarize what the image shows.",
    "What does this picture show? Answer briefly.", "Provide a concise caption.",
)
DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.", "Describe everything you see in this picture.",
    "Give a detailed description of the image.",
)


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else PLURAL_SHAPES[shape]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def name(obj: WorldObject, with_size: bool = False) -> str:
    """'red circle' / 'large red circle' (colour-shape pairs are unique within a scene)."""
    return f"{obj.size} {obj.color} {obj.shape}" if with_size else f"{obj.color} {obj.shape}"


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relations(a: WorldObject, b: WorldObject) -> tuple[str, ...]:
    """Every relation word R with 'a is R b' unambiguously true (at most one per axis)."""
    (ax, ay), (bx, by) = a.center, b.center
    found = []
    if ax < b.bbox[0] and bx >= a.bbox[2]:
        found.append("left")
    elif bx < a.bbox[0] and ax >= b.bbox[2]:
        found.append("right")
    if ay < b.bbox[1] and by >= a.bbox[3]:
        found.append("above")
    elif by < a.bbox[1] and ay >= b.bbox[3]:
        found.append("below")
    return tuple(found)


def primary_relation(a: WorldObject, b: WorldObject) -> str | None:
    """The one answer to 'where is a relative to b?', or None when no single word is clearly right."""
    found = relations(a, b)
    if len(found) == 1:
        return found[0]
    if len(found) == 2:
        dx, dy = abs(a.center[0] - b.center[0]), abs(a.center[1] - b.center[1])
        if dx >= DOMINANCE * dy:
            return found[0]
        if dy >= DOMINANCE * dx:
            return found[1]
    return None


def relation_sentence(a: WorldObject, b: WorldObject, relation: str) -> str:
    return f"The {name(a)} is {RELATION_PHRASES[relation]} the {name(b)}."


def related_pairs(scene: Scene) -> list[tuple[WorldObject, WorldObject, str]]:
    """(a, b, primary relation) for every ordered pair i < j that has one, in scene order."""
    pairs = []
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1:]:
            relation = primary_relation(a, b)
            if relation is not None:
                pairs.append((a, b, relation))
    return pairs


def left_to_right(scene: Scene) -> list[WorldObject] | None:
    """Objects sorted by centre x when every neighbour is unambiguously left of the next; else None."""
    ordered = sorted(scene.objects, key=lambda obj: obj.center[0])
    if len(ordered) < 2 or any("left" not in relations(a, b) for a, b in zip(ordered, ordered[1:])):
        return None
    return ordered


def template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def template_fragments(template: str) -> list[str]:
    """The literal text of a template (what identifies it in a caption)."""
    return [literal.strip() for literal, _, _, _ in string.Formatter().parse(template) if literal.strip()]


def caption_fields(scene: Scene, rng: random.Random) -> dict[str, str | None]:
    """Every field a template may use; None where the scene cannot support it."""
    order = list(scene.objects)
    rng.shuffle(order)
    count = len(order)
    pairs = related_pairs(scene)
    chosen = rng.sample(pairs, min(len(pairs), rng.randint(1, 2))) if pairs else []
    ordered = left_to_right(scene)
    listed = join_phrases([with_article(name(obj)) for obj in order])
    sized = join_phrases([with_article(name(obj, with_size=True)) for obj in order])
    return {
        "list": listed, "List": capitalize(listed), "sized_list": sized, "Sized_list": capitalize(sized),
        "count": number_word(count), "Count": capitalize(number_word(count)),
        "is_are": "is" if count == 1 else "are",
        "shape_noun": "shape" if count == 1 else "shapes", "object_noun": "object" if count == 1 else "objects",
        "background": BACKGROUND_WORDS[scene.background.kind],
        "relations": " ".join(relation_sentence(a, b, rel) for a, b, rel in chosen) if chosen else None,
        "lr_list": join_phrases([with_article(name(obj)) for obj in ordered]) if ordered else None,
    }


def caption(scene: Scene, rng: random.Random, templates: tuple[str, ...] = TRAIN_CAPTION_TEMPLATES) -> str:
    """One true caption from a template the scene supports (every template list has always-usable ones)."""
    fields = caption_fields(scene, rng)
    usable = [t for t in templates if all(fields[f] is not None for f in template_fields(t))]
    return rng.choice(usable).format(**fields)


def detailed_caption(scene: Scene, rng: random.Random) -> str:
    """The long-form answer to 'describe in detail': count, background, every object, the relations.
    Built from training phrasings only (it is used in stage 2)."""
    fields = caption_fields(scene, rng)
    text = "There {is_are} {count} {shape_noun} on a {background} background: {sized_list}.".format(**fields)
    pairs = related_pairs(scene)
    if pairs:
        text += " " + " ".join(relation_sentence(a, b, rel) for a, b, rel in rng.sample(pairs, min(3, len(pairs))))
    return text
