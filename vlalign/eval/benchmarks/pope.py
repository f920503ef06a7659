"""POPE (object hallucination, yes/no): the official scoring, and lmms-eval's.

official (POPE's and LLaVA-1.5's `eval_pope.py`): keep the answer's first sentence (up to the first "."),
drop commas, split on spaces; the answer is "no" when one of the words is "No", "no" or "not", else "yes".
So "Yes, there is a red circle." is yes and "There is no dog." is no. yes-ratio = share of answers read as
yes. Precision, recall and F1 treat "yes" as the positive class.

lmms-eval (`tasks/pope/utils.py`): the answer, lower-cased and stripped, must equal "yes" or "no" exactly;
anything else is wrong, and counts as neither a true positive nor a false negative. Its yes-ratio counts
the ground truth, not the answers (0.5 on balanced POPE).

Both: per split (random / popular / adversarial) and pooled; LLaVA papers quote the mean F1 of the splits.
"""

from __future__ import annotations

from vlalign.eval.benchmarks.common import Decision, Scoring, check_scoring, prediction_for, ratio

NEGATIVE_WORDS = ("No", "no", "not")


def parse_official(text: str) -> str:
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


def parse_lmms_eval(text: str) -> str:
    return text.lower().strip()


def split_metrics(decisions: list[Decision], scoring: Scoring) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of one set of decisions ("yes" = positive)."""
    true_pos = sum(d.gold == "yes" and d.parsed == "yes" for d in decisions)
    false_pos = sum(d.gold == "no" and d.parsed == "yes" for d in decisions)
    false_neg = sum(d.gold == "yes" and d.parsed == "no" for d in decisions)
    precision, recall = ratio(true_pos, true_pos + false_pos), ratio(true_pos, true_pos + false_neg)
    # official: the share of answers read as yes; lmms-eval counts the ground truth's yes instead
    yes = sum((d.parsed if scoring == "official" else d.gold) == "yes" for d in decisions)
    return {"accuracy": ratio(sum(d.correct for d in decisions), len(decisions)), "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": ratio(yes, len(decisions)), "n": len(decisions)}


def score_pope(questions: list[dict], predictions: dict[str, str],
               scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with `question_id`, `label` (or `answer`) yes|no and `category` (the split).
    Returns the decisions in question order and {"splits": {split: metrics}, "all": metrics, "mean_f1"}."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, by_split = [], {}
    for question in questions:
        gold = str(question.get("label", question.get("answer"))).lower().strip()
        if gold not in ("yes", "no"):
            raise ValueError(f"POPE question {question['question_id']!r}: label must be yes or no, got {gold!r}")
        text = prediction_for(predictions, question["question_id"], "POPE")
        parsed = parse(text)
        decision = Decision(str(question["question_id"]), text, parsed, gold, parsed == gold)
        decisions.append(decision)
        by_split.setdefault(question.get("category", "all"), []).append(decision)
    splits = {name: split_metrics(group, scoring) for name, group in by_split.items()}
    mean_f1 = sum(m["f1"] for m in splits.values()) / len(splits) if splits else 0.0
    return decisions, {"splits": splits, "all": split_metrics(decisions, scoring), "mean_f1": mean_f1}
