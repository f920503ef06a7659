"""VQAv2 and TextVQA: EvalAI's normaliser, the leave-one-out soft accuracy, official vs lmms-eval scoring, and
the readers of the official files and of lmms-lab's `datasets` saves. Every expected number is worked out by
hand from the definition in `vlalign/eval/benchmarks/vqa.py`'s docstring, in the comment next to it."""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image

from vlalign.errors import DataError
from vlalign.eval.benchmarks.tables import open_image
from vlalign.eval.benchmarks.vqa import (evalai_answer, leave_one_out_accuracy, normalize, read_textvqa,
                                         read_vqav2, score_textvqa, score_vqav2)


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _humans(*counts: tuple[str, int]) -> list[str]:
    return [answer for answer, n in counts for _ in range(n)]


def test_evalai_normaliser_follows_the_punctuation_number_article_and_contraction_rules():
    assert evalai_answer("Two.") == "2"  # period not before a digit dropped, lower-cased, two -> 2
    assert evalai_answer("Dont") == "don't"  # the contractions table
    assert evalai_answer("The Man's hat") == "man 's hat"  # m4c splits "'s" off; "the" dropped
    assert evalai_answer("1,000") == "1000"  # m4c deletes every comma
    assert normalize("t-shirt") == "t shirt"  # a mark touching no space becomes a space
    assert normalize("left - right") == "left right"  # ... one touching a space is deleted
    assert normalize("1,000 t-shirts") == "1000 tshirts"  # a comma between digits: every mark deleted
    assert normalize("2.5") == "2.5" and normalize("a dog.") == "dog"  # decimal point kept; article dropped
    assert normalize("none") == "0"  # EvalAI's number map counts "none" as 0


@pytest.mark.parametrize("matches, expected", [
    (0, 0.0),
    (1, 0.3),  # 9 subsets keep the match: 9 x 1/3; the subset without it has 0 -> 3/10
    (2, 0.6),  # (2 x 1/3 + 8 x 2/3) / 10 = 18/30
    (3, 0.9),  # (3 x 2/3 + 7 x 1) / 10
    (4, 1.0),  # every 9-subset still holds 3 matches
])
def test_leave_one_out_accuracy_averages_the_ten_nine_answer_subsets(matches, expected):
    humans = _humans(("2", matches), ("3", 10 - matches))
    assert leave_one_out_accuracy("2", humans) == pytest.approx(expected)


VQAV2_QUESTIONS = [
    {"question_id": "1", "answers": _humans(("2", 2), ("3", 8)), "answer_type": "number",
     "question_type": "how many"},
    {"question_id": "2", "answers": _humans(("t-shirt", 10)), "answer_type": "other", "question_type": "what is"},
    {"question_id": "3", "answers": _humans(("man's", 3), ("man", 7)), "answer_type": "other",
     "question_type": "whose"},
    {"question_id": "4", "answers": _humans(("yes", 10)), "answer_type": "yes/no", "question_type": "is the"},
    {"question_id": "5", "answers": _humans(("don't", 4), ("no", 6)), "answer_type": "other",
     "question_type": "what is"},
    {"question_id": "6", "answers": _humans(("no", 10)), "answer_type": "yes/no", "question_type": "is the"},
]
VQAV2_ANSWERS = {"1": "Two.", "2": "T-shirt", "3": "Man's", "4": "Yes", "5": "dont", "6": "No.\n"}


def test_vqav2_official_normalises_only_when_the_humans_disagree():
    decisions, metrics = score_vqav2(VQAV2_QUESTIONS, VQAV2_ANSWERS, "official")
    # 1: "two." -> "2", 2 of 10 match: 0.6. 2: LLaVA's m4c step submits "t shirt"; ten identical "t-shirt" are
    # compared as written: 0. 3: submitted "man 's" misses "man's": 0. 4: "yes" = ten "yes": 1. 5: "don't"
    # x 4: 1. 6: "no": 1.
    assert [d.parsed for d in decisions] == ["2", "t shirt", "man 's", "yes", "don't", "no"]
    assert [d.score for d in decisions] == pytest.approx([0.6, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert [d.correct for d in decisions] == [False, False, False, True, True, True]  # full credit only
    assert metrics["accuracy"] == pytest.approx(3.6 / 6) and metrics["n"] == 6
    types = metrics["answer_types"]
    assert {name: types[name]["n"] for name in types} == {"number": 1, "other": 3, "yes/no": 2}
    assert types["number"]["accuracy"] == pytest.approx(0.6)
    assert types["other"]["accuracy"] == pytest.approx(1 / 3)  # (0 + 0 + 1) / 3
    assert types["yes/no"]["accuracy"] == 1.0
    assert metrics["question_types"]["what is"] == pytest.approx({"accuracy": 0.5, "n": 2})  # q2 0, q5 1


def test_vqav2_lmms_eval_normalises_both_sides_always_and_keeps_possessives():
    decisions, metrics = score_vqav2(VQAV2_QUESTIONS, VQAV2_ANSWERS, "lmms-eval")
    # 2: both sides "t shirt": 1. 3: "man's" matches 3 of 10: 0.9; the rest as official
    assert [d.score for d in decisions] == pytest.approx([0.6, 1.0, 0.9, 1.0, 1.0, 1.0])
    assert metrics["accuracy"] == pytest.approx(5.5 / 6)
    assert metrics["answer_types"]["other"]["accuracy"] == pytest.approx(2.9 / 3)  # (1 + 0.9 + 1) / 3


def test_vqa_scorers_refuse_a_missing_prediction_missing_answers_and_a_bad_scoring():
    with pytest.raises(DataError, match="no prediction for VQAv2 question '6'"):
        score_vqav2(VQAV2_QUESTIONS, {k: v for k, v in VQAV2_ANSWERS.items() if k != "6"})
    with pytest.raises(DataError, match="record 'x'.*no human answers"):
        score_vqav2([{"question_id": "x"}], {"x": "yes"})
    with pytest.raises(ValueError, match="scoring must be one of"):
        score_textvqa([], {}, "vqa")


TEXTVQA_QUESTIONS = [
    {"question_id": "t1", "answers": _humans(("coca cola", 2), ("coca-cola", 1), ("coke", 7))},
    {"question_id": "t2", "answers": _humans(("stop", 2), ("go", 7))},  # 9 answers only
]


def test_textvqa_applies_m4c_on_both_sides_and_the_official_evaluator_needs_ten_answers():
    decisions, metrics = score_textvqa(TEXTVQA_QUESTIONS[:1], {"t1": "Coca-Cola"}, "official")
    # "coca-cola" -> "coca cola" on both sides: 3 of 10 humans match -> 0.9
    assert decisions[0].parsed == "coca cola" and metrics == pytest.approx({"accuracy": 0.9, "n": 1})
    with pytest.raises(DataError, match="record 't2'.*9 human answers; the official evaluator needs 10"):
        score_textvqa(TEXTVQA_QUESTIONS, {"t1": "Coca-Cola", "t2": "STOP"}, "official")
    decisions, metrics = score_textvqa(TEXTVQA_QUESTIONS, {"t1": "Coca-Cola", "t2": "STOP"}, "lmms-eval")
    # t2 over 9 answers, 2 "stop": the 2 subsets without one keep 1 match (1/3), the 7 others 2 (2/3):
    # (2 x 1/3 + 7 x 2/3) / 9 = 16/27
    assert [d.score for d in decisions] == pytest.approx([0.9, 16 / 27])
    assert metrics["accuracy"] == pytest.approx((0.9 + 16 / 27) / 2)


# ---- readers ---------------------------------------------------------------------------------------------

def _write_json(path, document) -> None:
    path.write_text(json.dumps(document))


def _vqav2_annotation(question_id: int, answers: list[str], answer_type: str) -> dict:
    return {"question_id": question_id, "image_id": question_id // 10, "answer_type": answer_type,
            "question_type": "how many", "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


@pytest.fixture
def vqav2_files(tmp_path):
    folder = tmp_path / "vqav2"
    folder.mkdir()
    _write_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "How many dogs?", "question_id": 420},
        {"image_id": 7, "question": "Is it red?", "question_id": 71}]})
    _write_json(folder / "v2_mscoco_val2014_annotations.json", {"annotations": [
        _vqav2_annotation(71, ["yes"] * 10, "yes/no"), _vqav2_annotation(420, ["2"] * 9 + ["3"], "number")]})
    images = tmp_path / "val2014"
    images.mkdir()
    Image.new("RGB", (2, 2), "red").save(images / "COCO_val2014_000000000042.jpg")
    return folder


def test_read_vqav2_joins_questions_and_annotations_and_names_coco_images(vqav2_files, tmp_path):
    records = read_vqav2(vqav2_files / "v2_OpenEnded_mscoco_val2014_questions.json")
    first = records[0]
    assert first["question_id"] == "420" and first["question"] == "How many dogs?"
    assert first["image"] == "COCO_val2014_000000000042.jpg"  # relative to the val2014 folder
    assert first["answers"] == ["2"] * 9 + ["3"] and first["answer_type"] == "number"
    assert open_image(first["image"], tmp_path / "val2014").size == (2, 2)
    assert read_vqav2(vqav2_files) == records  # the folder holding both files
    assert [r["question_id"] for r in records] == ["420", "71"]  # the questions' order


def test_read_vqav2_reads_lmms_lab_save_to_disk_with_embedded_images(tmp_path):
    answers = [[{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["no"] * 10)]]
    dataset = datasets.Dataset.from_dict({
        "question_id": [71], "question": ["Is it red?"], "image_id": [7], "answers": answers,
        "answer_type": ["yes/no"], "question_type": ["is it"], "multiple_choice_answer": ["no"],
        "image": [{"bytes": _png("blue"), "path": None}]}).cast_column("image", datasets.Image())
    dataset.save_to_disk(str(tmp_path / "VQAv2"))
    (record,) = read_vqav2(tmp_path / "VQAv2")
    assert record["question_id"] == "71" and record["answers"] == ["no"] * 10
    assert isinstance(record["image"], bytes) and open_image(record["image"]).getpixel((0, 0)) == (0, 0, 255)


def test_read_vqav2_names_the_bad_input(vqav2_files, tmp_path):
    questions = vqav2_files / "v2_OpenEnded_mscoco_val2014_questions.json"
    annotations = vqav2_files / "v2_mscoco_val2014_annotations.json"
    document = json.loads(questions.read_text())
    document["questions"].append({"image_id": 9, "question": "Why?", "question_id": 99})
    _write_json(questions, document)
    with pytest.raises(DataError, match="record '99': question '99' has no annotation"):
        read_vqav2(questions)
    document["questions"][-1] = {"image_id": 7, "question_id": 71}  # a second 71, and without its question
    _write_json(questions, document)
    with pytest.raises(DataError, match="record '71', field 'question': no 'question'"):
        read_vqav2(questions)
    document["questions"][-1]["question"] = "Again?"
    _write_json(questions, document)
    with pytest.raises(DataError, match="question id '71' appears twice"):
        read_vqav2(questions)
    annotations.write_text("{not json")
    with pytest.raises(DataError, match="annotations.json: not JSON"):
        read_vqav2(questions)
    annotations.unlink()
    with pytest.raises(DataError, match="v2_mscoco_val2014_annotations.json: no such file"):
        read_vqav2(questions)
    (vqav2_files / "v2_OpenEnded_mscoco_test2015_questions.json").write_text("{}")
    with pytest.raises(DataError, match="expected one \\*_questions.json"):
        read_vqav2(vqav2_files)


@pytest.fixture
def textvqa_file(tmp_path):
    answers = ["dakota"] * 10
    path = tmp_path / "TextVQA_0.5.1_val.json"
    _write_json(path, {"dataset_type": "val", "data": [
        {"question_id": 34602, "question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901",
         "answers": answers, "set_name": "val"},
        {"question_id": 34603, "question": "what does the sign say?", "image_id": "00c359f294f7dcd9",
         "answers": ["stop"] * 10, "set_name": "val"}]})
    _write_json(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [
        {"image_id": "003a8ae2ef43b901", "ocr_tokens": ["dakota", "digital"]},
        {"image_id": "00c359f294f7dcd9", "ocr_tokens": []}]})
    return path


def test_read_textvqa_adds_llava_reference_ocr_line(textvqa_file):
    records = read_textvqa(textvqa_file)
    assert records[0]["question"] == "what is the brand of this camera?\nReference OCR token: dakota, digital"
    assert records[1]["question"] == "what does the sign say?"  # no OCR token: no line
    assert records[0]["image"] == "train_images/003a8ae2ef43b901.jpg" and records[0]["question_id"] == "34602"
    assert records[0]["answers"] == ["dakota"] * 10
    assert [r["question"] for r in read_textvqa(textvqa_file, ocr=False)] == [
        "what is the brand of this camera?", "what does the sign say?"]


def test_read_textvqa_without_ocr_tokens_says_so_unless_ocr_is_off(textvqa_file):
    (textvqa_file.parent / "TextVQA_Rosetta_OCR_v0.2_val.json").unlink()
    with pytest.raises(DataError, match="record '34602', field 'ocr_tokens': no OCR tokens"):
        read_textvqa(textvqa_file)
    assert len(read_textvqa(textvqa_file, ocr=False)) == 2


def test_read_textvqa_reads_lmms_lab_parquet_with_its_ocr_column(tmp_path):
    dataset = datasets.Dataset.from_dict({
        "question_id": [34602], "question": ["what is the brand of this camera?"], "image_id": ["003a8ae2ef43b901"],
        "answers": [["dakota"] * 10], "ocr_tokens": [["dakota", "digital"]],
        "image": [{"bytes": _png("green"), "path": None}]}).cast_column("image", datasets.Image())
    dataset.to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    (record,) = read_textvqa(tmp_path / "validation-00000-of-00001.parquet")
    assert record["question"] == "what is the brand of this camera?\nReference OCR token: dakota, digital"
    assert open_image(record["image"]).getpixel((1, 1)) == (0, 128, 0)


def test_read_textvqa_names_a_missing_field_and_a_duplicate(textvqa_file):
    document = json.loads(textvqa_file.read_text())
    del document["data"][1]["answers"]
    _write_json(textvqa_file, document)
    with pytest.raises(DataError, match="record '34603', field 'answers'"):
        read_textvqa(textvqa_file)
    document["data"][1]["answers"], document["data"][1]["question_id"] = ["a"] * 10, 34602
    _write_json(textvqa_file, document)
    with pytest.raises(DataError, match="question id '34602' appears twice"):
        read_textvqa(textvqa_file)
    with pytest.raises(DataError, match="no such file"):
        read_textvqa(textvqa_file.parent / "missing.json")
