"""MMBench: the official (VLMEvalKit) and lmms-eval letter matchers, CircularEval, and the readers of the official
TSV (base64 images, shared-image rows, published or expanded passes) and of lmms-lab's `datasets` form. Every
expected value is worked out by hand from the rules in `vlalign/eval/benchmarks/mmbench.py`'s docstring."""

from __future__ import annotations

import base64
import csv
import io

import datasets
import pytest
from PIL import Image

from vlalign.errors import DataError
from vlalign.eval.benchmarks.mmbench import parse_lmms_eval, parse_official, read_mmbench, score_mmbench

ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}  # option texts 3 + 3 + 4 + 4 = 14 characters


@pytest.mark.parametrize("answer, official, lmms_eval", [
    ("B", "B", "B"),
    ("B. dog", "B", "B"),  # lmms-eval: the word "B." is one of its written forms
    ("(C)", "C", "C"),
    ("The answer is B.", "B", "B"),  # official: "B" is among the last 4 words; lmms-eval: the form "B."
    ("dog", "B", "B"),  # no letter: the one option text in the answer
    ("I think it is a bird.", "C", "C"),  # 21 characters <= 2 x 14, "bird" in it
    ("There is a cat and a dog.", "FAILED", "FAILED"),  # two option texts
    # two letters; lmms-eval's extractor then prefers the letter that starts the answer
    ("B or C", "FAILED", "B"),
    # a VLMEvalKit refusal (Z, never right); lmms-eval's last resort: any capital letter, the C of "Cannot"
    ("Cannot determine the answer", "Z", "C"),
    # official: B is the first of 11 words, not among the last 4; the answer (52 characters) is longer than
    # 2 x 14 for the text rule. lmms-eval: one bare letter, and no word "A"
    ("B is right because the animal in the picture has fur", "FAILED", "B"),
    ("answer is b", "B", "FAILED"),  # official: "answer is X" ignores case; lmms-eval has no capital letter
    ("Dunno", "FAILED", "D"),  # lmms-eval's last resort: any capital option letter in the answer
])
def test_letter_matchers(answer, official, lmms_eval):
    assert parse_official(answer, ANIMALS) == official
    assert parse_lmms_eval(answer, ANIMALS) == lmms_eval


def _b64(colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
           "split"]


def _write_tsv(path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in COLUMNS} for row in rows)


QUESTIONS = [  # published once each: the reader expands them into their passes
    {"index": 0, "question": "Which animal is shown?", "hint": "Look at the pet.", "A": "cat", "B": "dog",
     "C": "bird", "D": "fish", "answer": "B", "category": "image_scene", "l2-category": "coarse_perception",
     "image": _b64("red")},
    {"index": 1, "question": "What colour is the ball?", "A": "red", "B": "blue", "C": "green", "answer": "C",
     "category": "attribute_recognition", "l2-category": "finegrained_perception (instance-level)",
     "image": "0"},  # shares row 0's image
    {"index": 2, "question": "What is on the table?", "A": "cup", "B": "book", "C": "pen", "D": "lamp",
     "answer": "D", "category": "image_scene", "l2-category": "coarse_perception", "image": _b64("blue")},
]
PREDICTIONS = {
    "0": "B", "1000000": "The answer is A.", "2000000": "dog", "3000000": "(C)",
    "1": "C. green", "1000001": "B",
    "2000001": "A is correct since the ball looks green to me",  # official: A is not in the last 4 words
    "2": "Dunno", "1000002": "C", "2000002": "B", "3000002": "A",
}


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "mmbench_dev_20230712.tsv"
    _write_tsv(path, QUESTIONS)
    return path


def test_read_mmbench_expands_each_question_into_its_rotations(tsv):
    records = read_mmbench(tsv)
    assert [r["question_id"] for r in records] == ["0", "1000000", "2000000", "3000000", "1", "1000001",
                                                   "2000001", "2", "1000002", "2000002", "3000002"]
    by_id = {r["question_id"]: r for r in records}
    # pass 1 of question 0: options dog, bird, fish, cat under A-D; the answer "dog" is now A
    assert by_id["1000000"]["question"] == ("Look at the pet.\nWhich animal is shown?\nA. dog\nB. bird\nC. fish"
                                            "\nD. cat")
    assert [by_id[q]["answer"] for q in ("0", "1000000", "2000000", "3000000")] == ["B", "A", "D", "C"]
    assert by_id["1000000"]["index"] == "0" and by_id["1000000"]["rotation"] == 1
    # question 1: no hint, three options; pass 2 shows green, red, blue -> the answer "green" is A
    assert by_id["2000001"]["question"] == "What colour is the ball?\nA. green\nB. red\nC. blue"
    assert by_id["2000001"]["answer"] == "A" and by_id["2000001"]["options"] == {"A": "green", "B": "red",
                                                                               "C": "blue"}
    assert by_id["1"]["image"] == by_id["0"]["image"] == base64.b64decode(QUESTIONS[0]["image"])
    assert by_id["1"]["l2_category"] == "finegrained_perception (instance-level)"


def test_mmbench_official_circular_accuracy_needs_every_pass(tsv):
    decisions, metrics = score_mmbench(read_mmbench(tsv), PREDICTIONS, "official")
    wrong = [d.question_id for d in decisions if not d.correct]
    assert wrong == ["2000001", "2"]  # the long answer, "Dunno"
    # question 0: 4 passes right; 1: pass 2 wrong; 2: pass 0 wrong -> 1 of 3. Pass 0: 0 and 1 right -> 2 of 3
    assert metrics["circular_accuracy"] == pytest.approx(1 / 3) and metrics["n_questions"] == 3
    assert metrics["vanilla_accuracy"] == pytest.approx(2 / 3) and metrics["n_vanilla"] == 3
    assert metrics["n_passes"] == 11
    assert metrics["categories"] == {"image_scene": {"accuracy": 0.5, "n": 2},  # questions 0 and 2
                                     "attribute_recognition": {"accuracy": 0.0, "n": 1}}
    assert metrics["l2_categories"]["coarse_perception"] == {"accuracy": 0.5, "n": 2}


def test_mmbench_lmms_eval_reads_more_answers_as_letters(tsv):
    decisions, metrics = score_mmbench(read_mmbench(tsv), PREDICTIONS, "lmms-eval")
    # "A is correct ..." (10 words with "A": maybe an article) -> the option text "green" -> A, right;
    # "Dunno" -> its capital D, right: every pass of all 3 questions
    assert all(d.correct for d in decisions)
    assert metrics["circular_accuracy"] == 1.0 and metrics["vanilla_accuracy"] == 1.0


def test_a_tsv_that_holds_its_rotated_passes_is_read_as_published(tmp_path):
    path = tmp_path / "MMBench_DEV_EN.tsv"
    _write_tsv(path, [
        {"index": 5, "question": "Is it day?", "A": "yes", "B": "no", "answer": "A", "category": "image_scene",
         "image": _b64("white")},
        {"index": 1000005, "question": "Is it day?", "A": "no", "B": "yes", "answer": "B",
         "category": "image_scene", "image": "5"}])
    records = read_mmbench(path)
    assert [(r["question_id"], r["index"], r["rotation"], r["answer"]) for r in records] == [
        ("5", "5", 0, "A"), ("1000005", "5", 1, "B")]  # not expanded again into 4 passes
    _, metrics = score_mmbench(records, {"5": "A", "1000005": "A"})
    assert metrics["circular_accuracy"] == 0.0 and metrics["vanilla_accuracy"] == 1.0
    _write_tsv(path, [{"index": 1000009, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": _b64("red")}])
    with pytest.raises(DataError, match="record '1000009'.*a rotated pass of question 9"):
        read_mmbench(path)


def test_read_mmbench_reads_lmms_lab_parquet(tmp_path):
    png = base64.b64decode(_b64("green"))
    dataset = datasets.Dataset.from_dict({
        "index": [7, 1000007], "question": ["Which is bigger?"] * 2, "hint": [None, None], "A": ["sun", "moon"],
        "B": ["moon", "sun"], "C": [None, None], "D": [None, None], "answer": ["A", "B"],
        "category": ["physical_property_reasoning"] * 2, "L2-category": ["attribute_reasoning"] * 2,
        "source": ["x"] * 2, "split": ["dev"] * 2, "image": [{"bytes": png, "path": None}] * 2,
    }).cast_column("image", datasets.Image())
    dataset.to_parquet(str(tmp_path / "dev-00000-of-00001.parquet"))
    records = read_mmbench(tmp_path, split="dev")
    assert [r["question"] for r in records] == ["Which is bigger?\nA. sun\nB. moon",
                                                "Which is bigger?\nA. moon\nB. sun"]
    assert records[1]["l2_category"] == "attribute_reasoning" and records[1]["image"] == png


def test_read_mmbench_names_the_bad_input(tmp_path):
    path = tmp_path / "bad.tsv"
    cases = [
        ({"image": "not base64!" * 10}, "record '0', field 'image': not base64"),
        ({"image": "3"}, "image names row '3', which holds no image"),
        ({"question": ""}, "record '0', field 'question': no 'question'"),
        ({"B": ""}, "1 options"),
        ({"answer": "E"}, "answer 'E' is not one of its options AB"),
        ({"index": "x"}, "record '#0', field 'index'"),
    ]
    for change, message in cases:
        _write_tsv(path, [{"index": 0, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": _b64("red"),
                           **change}])
        with pytest.raises(DataError, match=message):
            read_mmbench(path)
    row = {"index": 0, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": _b64("red")}
    _write_tsv(path, [row, row])
    with pytest.raises(DataError, match="question id '0' appears twice"):
        read_mmbench(path)
    with pytest.raises(DataError, match="no such file"):
        read_mmbench(tmp_path / "missing.tsv")


def test_score_mmbench_refuses_a_missing_prediction(tsv):
    records = read_mmbench(tsv)
    with pytest.raises(DataError, match="no prediction for MMBench question '3000002'"):
        score_mmbench(records, {k: v for k, v in PREDICTIONS.items() if k != "3000002"})
