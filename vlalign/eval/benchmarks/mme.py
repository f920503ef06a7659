"""MME (yes/no pairs, two questions per image): the official scoring (MME's `eval_tool/calculation.py`), and
lmms-eval's.

Per category: acc = questions answered right / questions; acc+ = images whose every question is right /
images; score = 100 x acc + 100 x acc+ (at most 200). Perception = the sum over its 10 categories (at most
2000), cognition over its 4 (at most 800).

Reading an answer, official: lower-case it; "yes" / "no" as is; else "yes" when "yes" is in its first four
characters, else "no" when "no" is, else "other" (always wrong). lmms-eval: also strips spaces and removes
every ".", and reads a one-letter answer "y" / "n" as yes / no.
"""

from __future__ import annotations

from vlalign.eval.benchmarks.common import Decision, Scoring, check_scoring, prediction_for, ratio

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def _prefix_rule(answer: str) -> str:
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def parse_official(text: str) -> str:
    return _prefix_rule(text.lower())


def parse_lmms_eval(text: str) -> str:
    answer = text.lower().strip().replace(".", "")
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    return _prefix_rule(answer)


def category_metrics(decisions: list[Decision], images: list[str]) -> dict[str, float]:
    """`images[i]`: the image of decisions[i]; acc+ needs every question of an image right."""
    by_image: dict[str, list[bool]] = {}
    for decision, image in zip(decisions, images):
        by_image.setdefault(image, []).append(decision.correct)
    acc = ratio(sum(d.correct for d in decisions), len(decisions))
    acc_plus = ratio(sum(all(marks) for marks in by_image.values()), len(by_image))
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus, "questions": len(decisions),
            "images": len(by_image)}


def score_mme(questions: list[dict], predictions: dict[str, str],
              scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with a unique `question_id`, `image` (what the two questions of a pair share),
    `answer` yes|no and `category`. Returns the decisions in question order and {"categories": {name: acc,
    acc_plus, score, ...}, "perception": total, "cognition": total}."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, groups = [], {}
    for question in questions:
        category, qid = question["category"], str(question["question_id"])
        if category not in PERCEPTION + COGNITION:
            raise ValueError(f"MME question {qid!r}: unknown category {category!r}; MME's are "
                             f"{', '.join(PERCEPTION + COGNITION)}")
        gold = str(question["answer"]).lower().strip()
        text = prediction_for(predictions, qid, "MME")
        parsed = parse(text)
        decision = Decision(qid, text, parsed, gold, parsed == gold)
        decisions.append(decision)
        groups.setdefault(category, ([], []))
        groups[category][0].append(decision)
        groups[category][1].append(str(question.get("image", qid)))
    categories = {name: category_metrics(*groups[name]) for name in PERCEPTION + COGNITION if name in groups}
    totals = {side: sum(categories[name]["score"] for name in names if name in categories)
              for side, names in (("perception", PERCEPTION), ("cognition", COGNITION))}
    return decisions, {"categories": categories, **totals}
