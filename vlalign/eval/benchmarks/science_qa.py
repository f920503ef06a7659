"""ScienceQA(-IMG): the official letter parsing (LLaVA-1.5's `eval_science_qa.py`), and lmms-eval's.

official: newlines become ". "; the answer is a letter when the stripped text is one of A-E, or the text
starts with "<letter>. ", or it contains "The answer is <letter>" (with or without the period); anything
else is FAILED. A letter beyond the problem's choices is wrong. So "The answer is B." is B, while
"A circle" is FAILED (not option A: no ". " after the letter) and a lower-case "b" is FAILED too.
lmms-eval (`tasks/scienceqa/utils.py`): right when the text equals the letter exactly (no stripping), or
starts with an upper-case letter and "." and that letter is the answer; "The answer is B." is wrong.

IMG accuracy (what LLaVA papers report as SQA-IMG) is the accuracy over the problems that have an image.
"""

from __future__ import annotations

import re

from vlalign.eval.benchmarks.common import Decision, Scoring, check_scoring, prediction_for, ratio

LETTERS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
ANSWER_IS = (re.compile(r"The answer is ([A-E])\."), re.compile(r"The answer is ([A-E])"))


def parse_official(text: str) -> str:
    text = text.replace("\n", ". ")
    if text.strip() in LETTERS:
        return text.strip()
    if len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        return text[0]
    for pattern in ANSWER_IS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return FAILED


def parse_lmms_eval(text: str) -> str:
    if text in LETTERS:
        return text
    if len(text) >= 2 and text[0].isupper() and text[1] == ".":
        return text[0]
    return FAILED


def score_science_qa(questions: list[dict], predictions: dict[str, str],
                     scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: ScienceQA problems with `question_id`, `choices` (list), `answer` (index of the right
    choice) and `image` (None or absent for text-only problems)."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, with_image = [], []
    for question in questions:
        qid, choices = str(question["question_id"]), question["choices"]
        gold = LETTERS[question["answer"]]
        text = prediction_for(predictions, qid, "ScienceQA")
        parsed = parse(text)
        valid = parsed in LETTERS[:len(choices)]  # a letter past the last choice is wrong
        decisions.append(Decision(qid, text, parsed, gold, valid and parsed == gold))
        with_image.append(bool(question.get("image")))
    image_decisions = [d for d, has in zip(decisions, with_image) if has]
    return decisions, {"accuracy": ratio(sum(d.correct for d in decisions), len(decisions)),
                       "img_accuracy": ratio(sum(d.correct for d in image_decisions), len(image_decisions)),
                       "n": len(decisions), "n_img": len(image_decisions)}
