"""Official and lmms-eval scoring of POPE, MME, ScienceQA and GQA. Every expected number is worked out by hand from the
benchmark's definition (see each scorer's docstring), in the comments next to it."""

from __future__ import annotations

import pytest

from vlalign.errors import DataError
from vlalign.eval.benchmarks.gqa import score_gqa
from vlalign.eval.benchmarks.mme import score_mme
from vlalign.eval.benchmarks.pope import score_pope
from vlalign.eval.benchmarks.science_qa import score_science_qa

POPE_QUESTIONS = [
    {"question_id": "1", "label": "yes", "category": "random"},
    {"question_id": "2", "label": "no", "category": "random"},
    {"question_id": "3", "label": "yes", "category": "random"},
    {"question_id": "4", "label": "no", "category": "random"},
    {"question_id": "5", "label": "yes", "category": "popular"},
    {"question_id": "6", "label": "no", "category": "popular"},
]
POPE_ANSWERS = {"1": "Yes, there is a red circle.", "2": "There is no dog.", "3": "No", "4": "yes", "5": "yes",
                "6": "I do not see one. Yes."}


def test_pope_official_reads_the_first_sentence_for_no_or_not():
    decisions, metrics = score_pope(POPE_QUESTIONS, POPE_ANSWERS, "official")
    # 1 yes (no negative word), 2 no ("no"), 3 no ("No"), 4 yes, 5 yes, 6 no ("not" in the first sentence)
    assert [d.parsed for d in decisions] == ["yes", "no", "no", "yes", "yes", "no"]
    random, popular = metrics["splits"]["random"], metrics["splits"]["popular"]
    # random: TP 1 (q1), TN 1 (q2), FN 1 (q3), FP 1 (q4)
    assert random == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5, "n": 4}
    # popular: TP 1 (q5), TN 1 (q6); yes-ratio: one answer of two read as yes
    assert popular == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5, "n": 2}
    assert metrics["mean_f1"] == pytest.approx(0.75)
    # pooled: TP 2, TN 2, FP 1, FN 1; answers read as yes: q1, q4, q5
    assert metrics["all"] == pytest.approx({"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                            "yes_ratio": 0.5, "n": 6})


def test_pope_lmms_eval_accepts_only_a_bare_yes_or_no_and_counts_the_ground_truth_yes():
    decisions, metrics = score_pope(POPE_QUESTIONS, POPE_ANSWERS, "lmms-eval")
    assert [d.correct for d in decisions] == [False, False, False, False, True, False]
    # random: q1, q2 are sentences (neither TP nor FN nor FP); q3 "no" on yes -> FN; q4 "yes" on no -> FP
    assert metrics["splits"]["random"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                           "yes_ratio": 0.5, "n": 4}
    # popular: q5 TP; q6 a sentence. yes-ratio = ground truth yes 1 of 2, whatever the answers
    assert metrics["splits"]["popular"] == {"accuracy": 0.5, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                            "yes_ratio": 0.5, "n": 2}


def test_pope_refuses_a_missing_prediction_and_a_bad_label():
    with pytest.raises(DataError, match="no prediction for POPE question '6'"):
        score_pope(POPE_QUESTIONS, {k: v for k, v in POPE_ANSWERS.items() if k != "6"})
    with pytest.raises(ValueError, match="label must be yes or no, got 'maybe'"):
        score_pope([{"question_id": "1", "label": "maybe", "category": "random"}], {"1": "yes"})
    with pytest.raises(ValueError, match="scoring must be one of"):
        score_pope(POPE_QUESTIONS, POPE_ANSWERS, "vqa")


MME_QUESTIONS = [
    {"question_id": "a1", "image": "A", "answer": "Yes", "category": "existence"},
    {"question_id": "a2", "image": "A", "answer": "No", "category": "existence"},
    {"question_id": "b1", "image": "B", "answer": "Yes", "category": "existence"},
    {"question_id": "b2", "image": "B", "answer": "No", "category": "existence"},
    {"question_id": "c1", "image": "C", "answer": "Yes", "category": "code_reasoning"},
    {"question_id": "c2", "image": "C", "answer": "No", "category": "code_reasoning"},
]
MME_ANSWERS = {"a1": "Yes", "a2": "No, there is none.", "b1": "There is a dog.", "b2": "no",
               "c1": "Yes, no doubt.", "c2": "N"}


def test_mme_official_score_is_acc_plus_acc_plus_per_category_summed_by_side():
    decisions, metrics = score_mme(MME_QUESTIONS, MME_ANSWERS, "official")
    # "no, there is none." starts with "no"; "there is a dog." has neither in "ther"; "yes, no doubt." is yes
    # ("yes" is looked for first); a lone "n" contains neither "yes" nor "no"
    assert [d.parsed for d in decisions] == ["yes", "no", "other", "no", "yes", "other"]
    existence = metrics["categories"]["existence"]
    # 3 of 4 questions right = 0.75; image A both right, image B not: acc+ 1/2 -> 75 + 50
    assert existence == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0, "questions": 4, "images": 2}
    # 1 of 2 right, no image with both: 50 + 0
    assert metrics["categories"]["code_reasoning"]["score"] == 50.0
    assert metrics["perception"] == 125.0 and metrics["cognition"] == 50.0


def test_mme_lmms_eval_reads_single_letters_and_drops_periods():
    decisions, metrics = score_mme(MME_QUESTIONS, MME_ANSWERS, "lmms-eval")
    assert [d.parsed for d in decisions] == ["yes", "no", "other", "no", "yes", "no"]
    assert metrics["perception"] == 125.0
    assert metrics["cognition"] == 200.0  # both of image C right: 100 + 100


def test_mme_names_an_unknown_category():
    with pytest.raises(ValueError, match="unknown category 'colour'"):
        score_mme([{"question_id": "x", "image": "X", "answer": "yes", "category": "colour"}], {"x": "yes"})


SQA_QUESTIONS = [
    {"question_id": "s1", "choices": ["x", "y", "z"], "answer": 1, "image": "s1.png"},
    {"question_id": "s2", "choices": ["x", "y", "z"], "answer": 0, "image": "s2.png"},
    {"question_id": "s3", "choices": ["x", "y", "z"], "answer": 2, "image": None},
    {"question_id": "s4", "choices": ["x", "y"], "answer": 0, "image": "s4.png"},
    {"question_id": "s5", "choices": ["x", "y", "z"], "answer": 1},
    {"question_id": "s6", "choices": ["x", "y", "z"], "answer": 0, "image": "s6.png"},
]
SQA_ANSWERS = {"s1": "The answer is B.", "s2": "A circle", "s3": "C. A square", "s4": "D", "s5": "B", "s6": "a"}


def test_science_qa_official_letter_parsing_and_img_accuracy():
    decisions, metrics = score_science_qa(SQA_QUESTIONS, SQA_ANSWERS, "official")
    # "A circle" has no ". " after the letter: FAILED, not option A; "D" is past s4's two choices; "a" is
    # not an upper-case letter
    assert [d.parsed for d in decisions] == ["B", "FAILED", "C", "D", "B", "FAILED"]
    assert [d.correct for d in decisions] == [True, False, True, False, True, False]
    # all: 3 of 6; with an image (s1, s2, s4, s6): only s1
    assert metrics == {"accuracy": 0.5, "img_accuracy": 0.25, "n": 6, "n_img": 4}


def test_science_qa_lmms_eval_wants_the_letter_itself_or_letter_period():
    decisions, metrics = score_science_qa(SQA_QUESTIONS, SQA_ANSWERS, "lmms-eval")
    # "The answer is B." wrong; "C. A square" right; "B" right; lower-case "a" equals s6's letter A
    # ignoring case (lmms-eval strips and lower-cases both sides): right
    assert [d.correct for d in decisions] == [False, False, True, False, True, True]
    # all: 3 of 6; with an image (s1, s2, s4, s6): s6 only
    assert metrics["accuracy"] == 0.5 and metrics["img_accuracy"] == 0.25


GQA_QUESTIONS = [
    {"question_id": "g1", "answer": "yes", "types": {"structural": "verify"}},
    {"question_id": "g2", "answer": "red", "types": {"structural": "query"}},
    {"question_id": "g3", "answer": "two", "types": {"structural": "query"}},
    {"question_id": "g4", "answer": "left", "types": {"structural": "query"}},
    {"question_id": "g5", "answer": "t-shirt", "types": {"structural": "query"}},
]
GQA_ANSWERS = {"g1": "Yes.", "g2": "The red one", "g3": "2", "g4": "Left!", "g5": "T-shirt."}


def test_gqa_official_is_exact_match_after_trailing_periods_and_case():
    decisions, metrics = score_gqa(GQA_QUESTIONS, GQA_ANSWERS, "official")
    # no article removal ("the red one"), no number words ("2" vs "two"), "!" stays ("left!")
    assert [d.correct for d in decisions] == [True, False, False, False, True]
    assert metrics == {"accuracy": 0.4, "n": 5, "binary": 1.0, "open": 0.25}


def test_gqa_lmms_eval_also_ignores_every_punctuation_mark():
    decisions, metrics = score_gqa(GQA_QUESTIONS, GQA_ANSWERS, "lmms-eval")
    assert [d.correct for d in decisions] == [True, False, False, True, True]  # "left!" and "tshirt" match
    assert metrics == {"accuracy": 0.6, "n": 5, "binary": 1.0, "open": 0.5}
