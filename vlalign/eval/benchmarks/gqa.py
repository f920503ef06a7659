"""GQA (testdev-balanced, short answers): the official scoring, and lmms-eval's.

official: LLaVA-1.5's `convert_gqa_for_eval.py` strips trailing periods and lower-cases the answer; GQA's
`eval.py` then counts exact matches with the gold answer. Its binary / open split: a question whose
structural type is "query" is open, every other type (verify, logical, choose, compare) binary. No article
removal or number-word mapping (that is VQAv2's normaliser, more lenient).
lmms-eval (`tasks/gqa/gqa.yaml`): exact match with ignore_case and ignore_punctuation, i.e. both sides
lower-cased and every ASCII punctuation mark removed, nothing else.
"""

from __future__ import annotations

import string

from vlalign.eval.benchmarks.common import Decision, Scoring, check_scoring, prediction_for, ratio

PUNCTUATION = str.maketrans("", "", string.punctuation)


def parse_official(text: str) -> str:
    return text.rstrip(".").lower()


def parse_lmms_eval(text: str) -> str:
    return text.lower().translate(PUNCTUATION)


def score_gqa(questions: list[dict], predictions: dict[str, str],
              scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with `question_id`, `answer` and optionally GQA's `types` ({"structural": ...})."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, kinds = [], []
    for question in questions:
        qid = str(question["question_id"])
        gold = str(question["answer"]) if scoring == "official" else parse_lmms_eval(str(question["answer"]))
        text = prediction_for(predictions, qid, "GQA")
        parsed = parse(text)
        decisions.append(Decision(qid, text, parsed, gold, parsed == gold))
        structural = (question.get("types") or {}).get("structural")
        kinds.append(None if structural is None else "open" if structural == "query" else "binary")
    metrics = {"accuracy": ratio(sum(d.correct for d in decisions), len(decisions)), "n": len(decisions)}
    for kind in ("binary", "open"):
        chosen = [d for d, k in zip(decisions, kinds) if k == kind]
        if chosen:
            metrics[kind] = ratio(sum(d.correct for d in chosen), len(chosen))
    return decisions, metrics
