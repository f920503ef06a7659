"""SEED-Bench: LLaVA-1.5's exact-letter scoring vs lmms-eval's first-character scoring, per dimension, and the
readers of SEED-Bench.json and of lmms-lab's `datasets` form (image questions only, video questions counted).
Every expected value is worked out by hand from `vlalign/eval/benchmarks/seed_bench.py`'s docstring."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

import datasets
import pytest
from PIL import Image

from vlalign.errors import DataError
from vlalign.eval.benchmarks.seed_bench import read_seed_bench, score_seed_bench
from vlalign.eval.benchmarks.tables import open_image


def _question(qid: str, type_id: int, answer: str, data_type: str = "image", **extra) -> dict:
    return {"question_id": qid, "question_type_id": type_id, "answer": answer, "data_type": data_type,
            "question": "How many towels are in the image?", "choice_a": "One", "choice_b": "Two",
            "choice_c": "Three", "choice_d": "Four", "data_id": f"{qid}_2591111986", **extra}


QUESTIONS = [_question("s1", 1, "B"), _question("s2", 5, "A"), _question("s3", 5, "C"), _question("s4", 9, "D"),
             _question("s5", 9, "B"), _question("s6", 1, "A")]
ANSWERS = {"s1": "B", "s2": "A. One", "s3": " C\n", "s4": "The answer is D.", "s5": "b", "s6": "(A)"}


@pytest.fixture
def seed_json(tmp_path):
    path = tmp_path / "SEED-Bench.json"
    video = _question("v1738", 10, "B", "video", data_id="94328.webm")
    path.write_text(json.dumps({"questions": QUESTIONS[:3] + [video] + QUESTIONS[3:], "question_type": {
        "Scene Understanding": 1, "Instances Counting": 5, "Text Understanding": 9, "Action Recognition": 10}}))
    return path


def test_seed_official_wants_the_letter_exactly(seed_json):
    decisions, metrics = score_seed_bench(read_seed_bench(seed_json), ANSWERS, "official")
    # after LLaVA's strip: "B" and "C" are letters; "A. One", "The answer is D.", "b", "(A)" are not
    assert [d.parsed for d in decisions] == ["B", "FAILED", "C", "FAILED", "FAILED", "FAILED"]
    assert metrics["accuracy"] == pytest.approx(2 / 6) and metrics["n"] == 6
    assert metrics["image_accuracy"] == pytest.approx(2 / 6) and metrics["n_image"] == 6
    assert metrics["dimensions"] == {"Scene Understanding": {"accuracy": 0.5, "n": 2},  # s1 right, s6 wrong
                                     "Instances Counting": {"accuracy": 0.5, "n": 2},  # s3 right
                                     "Text Understanding": {"accuracy": 0.0, "n": 2}}


def test_seed_lmms_eval_takes_the_first_character_ignoring_case(seed_json):
    decisions, metrics = score_seed_bench(read_seed_bench(seed_json), ANSWERS, "lmms-eval")
    # "A. One" -> A, " C" -> C, "The answer is D." -> T (wrong), "b" -> B, "(A)" -> "(" (wrong)
    assert [d.correct for d in decisions] == [True, True, True, False, True, False]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["dimensions"]["Instances Counting"] == {"accuracy": 1.0, "n": 2}
    assert metrics["dimensions"]["Text Understanding"] == {"accuracy": 0.5, "n": 2}


def test_read_seed_bench_keeps_image_questions_and_counts_the_video_ones(seed_json, caplog):
    skipped = Counter()
    with caplog.at_level(logging.WARNING, logger="vlalign.eval.benchmarks.seed_bench"):
        records = read_seed_bench(seed_json, skipped=skipped)
    assert [r["question_id"] for r in records] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert skipped == Counter({"video": 1}) and "skipped 1 video questions" in caplog.text
    first = records[0]
    assert first["question"] == "How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four"
    assert first["image"] == "s1_2591111986"  # the data_id, relative to SEED-Bench-image
    assert first["dimension"] == "Scene Understanding" and first["answer"] == "B"


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_seed_bench_reads_lmms_lab_save_to_disk_with_its_image_lists(tmp_path):
    image, video = _question("s1", 3, "C"), _question("v1", 11, "A", "video")
    rows = {key: [image[key], video[key]] for key in image}
    frames = [[{"bytes": _png("red"), "path": None}], [{"bytes": _png("blue"), "path": None}] * 2]
    dataset = datasets.Dataset.from_dict({**rows, "image": frames})
    dataset.cast_column("image", datasets.Sequence(datasets.Image())).save_to_disk(str(tmp_path / "SEED-Bench"))
    skipped = Counter()
    (record,) = read_seed_bench(tmp_path / "SEED-Bench", skipped=skipped)
    assert skipped["video"] == 1 and record["dimension"] == "Instance Attributes"  # SEED-Bench's id 3
    assert open_image(record["image"]).getpixel((0, 0)) == (255, 0, 0)


def test_seed_bench_names_the_bad_input(seed_json, tmp_path):
    document = json.loads(seed_json.read_text())
    del document["questions"][1]["choice_d"]
    seed_json.write_text(json.dumps(document))
    with pytest.raises(DataError, match="record 's2', field 'choice_d'"):
        read_seed_bench(seed_json)
    document["questions"][1] = _question("s1", 1, "A")
    seed_json.write_text(json.dumps(document))
    with pytest.raises(DataError, match="question id 's1' appears twice"):
        read_seed_bench(seed_json)
    seed_json.write_text('{"questions": [')
    with pytest.raises(DataError, match="SEED-Bench.json: not JSON"):
        read_seed_bench(seed_json)
    with pytest.raises(DataError, match="no such file"):
        read_seed_bench(tmp_path / "missing.json")
    with pytest.raises(DataError, match="no prediction for SEED-Bench question 's6'"):
        score_seed_bench(QUESTIONS, {k: v for k, v in ANSWERS.items() if k != "s6"})
    with pytest.raises(DataError, match="answer must be one of A-D, got 'E'"):
        score_seed_bench([_question("x", 1, "E")], {"x": "E"})
