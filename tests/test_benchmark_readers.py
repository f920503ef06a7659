"""Readers of POPE, MME, ScienceQA and GQA: each benchmark's own files and lmms-lab's `datasets` saves, written
here in a few records each. Every expected question text is worked out by hand from the format (LLaVA-1.5's
prompt = the record's question + PROMPT_SUFFIX), every expected metric by hand in the comments next to it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from vlalign.errors import DataError
from vlalign.eval.benchmarks import gqa, mme, pope, science_qa
from vlalign.eval.benchmarks.gqa import read_gqa, score_gqa
from vlalign.eval.benchmarks.mme import read_mme, score_mme
from vlalign.eval.benchmarks.pope import read_pope, score_pope
from vlalign.eval.benchmarks.science_qa import read_science_qa, score_science_qa
from vlalign.eval.benchmarks.tables import open_image

RED, GREEN, BLUE, GREY = (200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)


def _image(colour) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


def _save(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(colour).save(path)  # the format follows the suffix: real JPEGs for .jpg
    return path


def _png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    _image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour_of(ref, image_root=None):
    return open_image(ref, image_root).getpixel((4, 4))


def _near(pixel, colour) -> bool:  # a solid JPEG decodes within a step or two of its colour
    return all(abs(a - b) <= 4 for a, b in zip(pixel, colour))


def _json_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _table(columns: dict) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())


def test_the_answer_instructions_and_generation_lengths_are_llava_15s():
    short = "\nAnswer the question using a single word or phrase."
    assert pope.PROMPT_SUFFIX == mme.PROMPT_SUFFIX == gqa.PROMPT_SUFFIX == short
    assert science_qa.PROMPT_SUFFIX == "\nAnswer with the option's letter from the given choices directly."
    # LLaVA-1.5: model_vqa_loader's default 128; model_vqa_science's hard-coded 1024. lmms-eval: 128 / 16
    assert (pope.MAX_NEW_TOKENS, mme.MAX_NEW_TOKENS, gqa.MAX_NEW_TOKENS, science_qa.MAX_NEW_TOKENS) == (
        128, 128, 128, 1024)
    assert (pope.LMMS_EVAL_MAX_NEW_TOKENS, mme.LMMS_EVAL_MAX_NEW_TOKENS, gqa.LMMS_EVAL_MAX_NEW_TOKENS,
            science_qa.LMMS_EVAL_MAX_NEW_TOKENS) == (128, 16, 16, 16)


# --- POPE ---------------------------------------------------------------------------------------------------

def _pope_folder(tmp_path: Path) -> tuple[Path, Path]:
    val2014 = tmp_path / "val2014"
    _save(val2014 / "COCO_val2014_000000000001.jpg", RED)
    _save(val2014 / "COCO_val2014_000000000002.jpg", BLUE)
    coco = tmp_path / "coco"
    _json_lines(coco / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a kite in the image?",
         "label": "no"}])
    _json_lines(coco / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a cat in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a bowl in the image?",
         "label": "no"}])
    return coco, val2014


def test_pope_folder_reads_each_split_with_its_ids_made_unique_by_the_split(tmp_path):
    coco, val2014 = _pope_folder(tmp_path)
    records = read_pope(coco, val2014)
    # files in name order; both files number their questions from 1
    assert [r["question_id"] for r in records] == ["adversarial/1", "adversarial/2", "random/1", "random/2"]
    assert records[2] == {"question_id": "random/1", "question": "Is there a dog in the image?",
                          "image": "COCO_val2014_000000000001.jpg", "label": "yes", "category": "random"}
    assert records[2]["question"] + pope.PROMPT_SUFFIX == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase.")
    assert _near(_colour_of(records[0]["image"], val2014), BLUE)
    assert _near(_colour_of(records[3]["image"], val2014), RED)
    assert [r["question_id"] for r in read_pope(coco, split="random")] == ["random/1", "random/2"]
    assert [r["label"] for r in read_pope(coco / "coco_pope_adversarial.json")] == ["yes", "no"]


def test_pope_read_then_scored_per_split(tmp_path):
    coco, _ = _pope_folder(tmp_path)
    answers = {"random/1": "Yes, there is a dog.", "random/2": "No.", "adversarial/1": "There is no cat.",
               "adversarial/2": "Yes"}
    _, metrics = score_pope(read_pope(coco), answers)
    # random: TP (random/1) + TN (random/2): everything 1.0
    assert metrics["splits"]["random"] == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                           "yes_ratio": 0.5, "n": 2}
    # adversarial: FN (read as "no") + FP: precision = recall = F1 = 0
    assert metrics["splits"]["adversarial"]["f1"] == 0.0 and metrics["splits"]["adversarial"]["accuracy"] == 0.0
    assert metrics["mean_f1"] == 0.5


def test_pope_lmms_lab_save_embeds_its_images_and_its_restarting_ids_are_made_unique(tmp_path):
    _table({"id": ["0", "1", "2"], "question_id": ["1", "2", "1"],
            "question": ["Is there a dog in the image?", "Is there a kite in the image?",
                         "Is there a cat in the image?"],
            "answer": ["yes", "no", "no"], "image_source": ["COCO_val2014_000000000001"] * 3,
            "image": [_image(RED), _image(RED), _image(GREEN)], "category": ["random", "random", "popular"]},
           ).save_to_disk(str(tmp_path / "pope"))
    records = read_pope(tmp_path / "pope")
    assert [r["question_id"] for r in records] == ["random/1", "random/2", "popular/1"]
    assert [(r["question"], r["label"], r["category"]) for r in records][2] == (
        "Is there a cat in the image?", "no", "popular")
    assert isinstance(records[2]["image"], bytes) and _colour_of(records[2]["image"]) == GREEN
    _, metrics = score_pope(records, {"random/1": "yes", "random/2": "yes", "popular/1": "no"}, "lmms-eval")
    assert metrics["splits"]["random"]["accuracy"] == 0.5 and metrics["splits"]["popular"]["accuracy"] == 1.0


@pytest.mark.parametrize("rows, match", [
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}],
     "record 'random/1', field 'label': label must be yes or no, got 'maybe'"),
    ([{"question_id": 1, "image": "a.jpg", "label": "yes"}], "record 'random/1', field 'text': no 'text'"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"},
      {"question_id": 1, "image": "b.jpg", "text": "Is there a cat?", "label": "no"}],
     "record 'random/1', field 'question_id': this question id appears twice"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?\nAnswer the question using a single word or "
       "phrase.", "category": "random"}], "LLaVA's question file .* holds no labels"),
])
def test_pope_bad_records_are_errors_naming_the_record_and_field(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        read_pope(_json_lines(tmp_path / "coco_pope_random.json", rows))


def test_pope_bad_files_are_errors_naming_them(tmp_path):
    (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1, "image": "a.jpg", "text": "?", '
                                                    '"label": "yes"}\n{"question_id": 2,\n')
    with pytest.raises(DataError, match=r"coco_pope_random.json: line 2 is not JSON"):
        read_pope(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        read_pope(tmp_path / "missing")
    with pytest.raises(DataError, match="cannot tell the POPE split"):
        read_pope(_json_lines(tmp_path / "pope_questions.json", [{"question_id": 1}]))
    with pytest.raises(DataError, match="no POPE file of split 'popular'"):
        read_pope(tmp_path, split="popular")


# --- MME ----------------------------------------------------------------------------------------------------

def _mme_release(tmp_path: Path) -> Path:
    """existence in the images/ + questions_answers_YN/ layout, code_reasoning with image and .txt side by side."""
    root = tmp_path / "MME" / "MME_Benchmark_release_version"
    _save(root / "existence" / "images" / "000000000001.jpg", RED)
    _save(root / "existence" / "images" / "000000000002.jpg", GREEN)
    answers = root / "existence" / "questions_answers_YN"
    answers.mkdir(parents=True)
    (answers / "000000000001.txt").write_text("Is there a dog in this image? Please answer yes or no.\tYes\n"
                                              "Is there a kite in this image? Please answer yes or no.\tNo\n")
    # MME itself has a few doubled spaces before its instruction
    (answers / "000000000002.txt").write_text("Is there a red bus in the image?  Please answer yes or no.\tNo\n"
                                              "Is there a green bus in the image? Please answer yes or no.\tYes\n")
    _save(root / "code_reasoning" / "0001.png", BLUE)
    (root / "code_reasoning" / "0001.txt").write_text(
        "The image shows a python code. Is the output of the code '7'? Please answer yes or no.\tYes\r\n"
        "The image shows a python code. Is the output of the code '1'? Please answer yes or no.\tNo\r\n")
    (root / "__MACOSX").mkdir()  # what unzipping on a Mac leaves; not a category
    return root


def test_mme_release_folder_in_both_layouts(tmp_path):
    root = _mme_release(tmp_path)
    records = read_mme(tmp_path / "MME")  # the folder holding the release is found too
    assert [r["question_id"] for r in records] == [
        "existence/000000000001.jpg#0", "existence/000000000001.jpg#1", "existence/000000000002.jpg#0",
        "existence/000000000002.jpg#1", "code_reasoning/0001.png#0", "code_reasoning/0001.png#1"]
    assert [r["question"] + mme.PROMPT_SUFFIX for r in records[2:4]] == [
        "Is there a red bus in the image?\nAnswer the question using a single word or phrase.",
        "Is there a green bus in the image?\nAnswer the question using a single word or phrase."]
    assert records[4]["question"] == "The image shows a python code. Is the output of the code '7'?"
    assert [(r["pair"], r["answer"], r["category"]) for r in records[4:]] == [
        ("code_reasoning/0001.png", "yes", "code_reasoning"), ("code_reasoning/0001.png", "no", "code_reasoning")]
    assert [r["image"] for r in records[::2]] == [str((root / name).absolute()) for name in (
        "existence/images/000000000001.jpg", "existence/images/000000000002.jpg", "code_reasoning/0001.png")]
    assert _near(_colour_of(records[2]["image"]), GREEN) and _colour_of(records[5]["image"]) == BLUE
    # the release holds its images: an image root elsewhere changes nothing
    assert [r["image"] for r in read_mme(root, image_root=tmp_path)] == [r["image"] for r in records]


def test_mme_read_then_scored(tmp_path):
    records = read_mme(_mme_release(tmp_path))
    answers = dict(zip((r["question_id"] for r in records), ["Yes", "No", "No", "No", "Yes", "Yes"]))
    _, metrics = score_mme(records, answers)
    # existence: 3 of 4 right, image 1 both right, image 2 not: 75 + 50; code_reasoning: 1 of 2, no image: 50 + 0
    assert metrics["categories"]["existence"]["score"] == 125.0
    assert metrics["perception"] == 125.0 and metrics["cognition"] == 50.0


def test_mme_lmms_lab_save_groups_acc_plus_by_image_name_not_by_image_bytes(tmp_path):
    # two posters with the very same pixels: grouping by bytes would merge their pairs
    _table({"question_id": ["posters/tt01.jpg", "posters/tt01.jpg", "posters/tt02.jpg", "posters/tt02.jpg"],
            "image": [_image(GREY)] * 4,
            "question": ["Is this movie titled alien? Please answer yes or no.",
                         "Is this movie titled heat? Please answer yes or no.",
                         "Is this movie titled jaws? Please answer yes or no.",
                         "Is this movie titled up? Please answer yes or no."],
            "answer": ["Yes", "No", "Yes", "No"], "category": ["posters"] * 4}).save_to_disk(str(tmp_path / "mme"))
    records = read_mme(tmp_path / "mme")
    assert [r["question_id"] for r in records] == ["posters/tt01.jpg#0", "posters/tt01.jpg#1", "posters/tt02.jpg#0",
                                                   "posters/tt02.jpg#1"]
    assert records[0]["question"] == "Is this movie titled alien?" and _colour_of(records[0]["image"]) == GREY
    answers = {"posters/tt01.jpg#0": "Yes", "posters/tt01.jpg#1": "No", "posters/tt02.jpg#0": "Yes",
               "posters/tt02.jpg#1": "Yes"}
    _, metrics = score_mme(records, answers)
    # 3 of 4 right; tt01 both right, tt02 not: acc+ 1/2 -> 75 + 50 (one merged group would give 75 + 0)
    assert metrics["categories"]["posters"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0, "questions": 4,
                                                "images": 2}


def test_mme_bad_release_folders_are_errors_naming_the_file(tmp_path):
    root = _mme_release(tmp_path)
    (root / "colour").mkdir()
    with pytest.raises(DataError, match="colour, field 'category': unknown MME category 'colour'"):
        read_mme(root)
    (root / "colour").rmdir()
    text = root / "code_reasoning" / "0001.txt"
    text.write_text("Is the output '7'? Please answer yes or no.\tYes\nIs the output '1'?\tMaybe\n")
    with pytest.raises(DataError, match="0001.txt, record 'line 2', field 'answer': answer must be Yes or No"):
        read_mme(root)
    text.write_text("Is the output '7'? Please answer yes or no. Yes\n")
    with pytest.raises(DataError, match="0001.txt: line 1 is not question<TAB>answer"):
        read_mme(root)
    text.write_text("Is it '7'?\tYes\nIs it '1'?\tNo\nIs it '2'?\tNo\n")
    with pytest.raises(DataError, match="record 'code_reasoning/0001.png', field 'pair': MME asks two questions "
                                        "per image, this one has 3"):
        read_mme(root)
    text.unlink()
    (root / "code_reasoning" / "0002.txt").write_text("Is it '7'?\tYes\nIs it '1'?\tNo\n")
    with pytest.raises(DataError, match=r"0002.txt: no image 0002\.\*"):
        read_mme(root)
    llava = _json_lines(tmp_path / "llava_mme.jsonl", [{"question_id": "code_reasoning/0001.png"}])
    with pytest.raises(DataError, match="llava_mme.jsonl holds no answers"):
        read_mme(llava)
    with pytest.raises(DataError, match="MME's release has no splits"):
        read_mme(tmp_path / "MME", split="test")


def test_mme_lmms_lab_rows_with_an_unknown_category_are_refused(tmp_path):
    _table({"question_id": ["a.jpg", "a.jpg"], "image": [_image(GREY)] * 2, "question": ["Q?", "R?"],
            "answer": ["Yes", "No"], "category": ["colour", "colour"]}).save_to_disk(str(tmp_path / "mme"))
    with pytest.raises(DataError, match="record 'row 0', field 'category': unknown MME category 'colour'"):
        read_mme(tmp_path / "mme")


# --- ScienceQA ----------------------------------------------------------------------------------------------

PROBLEMS = {
    "5": {"question": "Which of these states is farthest north?", "choices": ["Maine", "Kansas", "Delaware"],
          "answer": 0, "hint": "Figure: a map.", "image": "image.png", "task": "closed choice",
          "lecture": "", "solution": "", "split": "test"},
    "15": {"question": "Would you find the word dozen on a dictionary page with the following guide words?\n"
                       "daddy - definition", "choices": ["no", "yes"], "answer": 0, "hint": "", "image": None,
           "split": "test"},
    "27": {"question": "Select the reptile.", "choices": ["toad", "alligator"], "answer": 1, "hint": "",
           "image": "image.png", "split": "train"},
}


def _sqa_folder(tmp_path: Path, problems: dict = PROBLEMS) -> Path:
    folder = tmp_path / "scienceqa"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"train": ["27"], "test": ["5", "15"], "minitest": ["5"]}))
    _save(folder / "images" / "test" / "5" / "image.png", RED)
    _save(folder / "images" / "train" / "27" / "image.png", GREEN)
    return folder


def test_science_qa_problems_are_posed_as_llava_15_poses_them(tmp_path):
    folder = _sqa_folder(tmp_path)
    records = read_science_qa(folder)  # split "test" by default, in pid_splits' order
    assert [r["question_id"] for r in records] == ["5", "15"]
    assert records[0]["question"] + science_qa.PROMPT_SUFFIX == (
        "Context: Figure: a map.\nWhich of these states is farthest north?\nA. Maine\nB. Kansas\nC. Delaware\n"
        "Answer with the option's letter from the given choices directly.")
    # no hint: no "Context:" line
    assert records[1]["question"] == ("Would you find the word dozen on a dictionary page with the following guide "
                                      "words?\ndaddy - definition\nA. no\nB. yes")
    assert (records[0]["choices"], records[0]["answer"], records[1]["image"]) == (["Maine", "Kansas", "Delaware"],
                                                                                  0, None)
    assert Path(records[0]["image"]) == (folder / "images" / "test" / "5" / "image.png").absolute()
    assert _colour_of(records[0]["image"]) == RED
    # a minitest pid's image lies under test/, its problem's own split
    assert read_science_qa(folder, split="minitest")[0]["image"] == records[0]["image"]
    # the folder's own images win over an image root; an image it lacks is taken under the root
    assert read_science_qa(folder, image_root=tmp_path)[0]["image"] == records[0]["image"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "images").rename(elsewhere / "images")
    train = read_science_qa(folder / "problems.json", image_root=elsewhere, split="train")
    assert [(r["question_id"], r["image"]) for r in train] == [("27", "images/train/27/image.png")]
    assert _colour_of(train[0]["image"], elsewhere) == GREEN


def test_science_qa_read_then_scored_with_img_accuracy(tmp_path):
    records = read_science_qa(_sqa_folder(tmp_path))
    _, metrics = score_science_qa(records, {"5": "B", "15": "The answer is A."})
    # "5" (with an image) wrong, "15" (text-only) right
    assert metrics == {"accuracy": 0.5, "img_accuracy": 0.0, "n": 2, "n_img": 1}


def test_science_qa_lmms_lab_full_and_img_saves(tmp_path):
    full = {"image": [_image(BLUE), None], "question": ["Which animal is this?", "Select the plant."],
            "choices": [["cat", "dog"], ["oak", "orca", "eel"]], "answer": [1, 0], "hint": ["Figure: a pet.", ""],
            "subject": ["natural science"] * 2}
    _table(full).to_parquet(str(tmp_path / "full.parquet"))
    records = read_science_qa(tmp_path / "full.parquet")
    assert [r["question_id"] for r in records] == ["0", "1"]  # no pid column: the row index
    assert records[0]["question"] == "Context: Figure: a pet.\nWhich animal is this?\nA. cat\nB. dog"
    assert records[1]["question"] == "Select the plant.\nA. oak\nB. orca\nC. eel"
    assert _colour_of(records[0]["image"]) == BLUE and records[1]["image"] is None
    _, metrics = score_science_qa(records, {"0": "B", "1": "B"})
    assert metrics == {"accuracy": 0.5, "img_accuracy": 1.0, "n": 2, "n_img": 1}
    _table({key: values[:1] for key, values in full.items()}).save_to_disk(str(tmp_path / "img"))
    assert [r["choices"] for r in read_science_qa(tmp_path / "img")] == [["cat", "dog"]]


def test_science_qa_bad_input_is_an_error_naming_file_record_and_field(tmp_path):
    folder = _sqa_folder(tmp_path)
    with pytest.raises(DataError, match=r"pid_splits.json: no split 'dev' \(it has train, test, minitest\)"):
        read_science_qa(folder, split="dev")
    (folder / "pid_splits.json").write_text(json.dumps({"test": ["5", "15", "5"]}))
    with pytest.raises(DataError, match="record '5', field 'question_id': this question id appears twice"):
        read_science_qa(folder)
    _sqa_folder(tmp_path, {**PROBLEMS, "5": {**PROBLEMS["5"], "answer": 3}})
    with pytest.raises(DataError, match="record '5', field 'answer': answer must be the index of one of the 3"):
        read_science_qa(folder)
    _sqa_folder(tmp_path, {key: value for key, value in PROBLEMS.items() if key != "15"})
    with pytest.raises(DataError, match="record '15': pid_splits.json names this pid"):
        read_science_qa(folder)
    (folder / "problems.json").write_text('{"5": {"question": "?"}, "5": {"question": "!"}}')
    with pytest.raises(DataError, match="problems.json, record '5': this key appears twice"):
        read_science_qa(folder)
    (folder / "problems.json").write_text('{"5": ')
    with pytest.raises(DataError, match="problems.json: not JSON"):
        read_science_qa(folder)
    llava = tmp_path / "llava_test_CQM-A.json"
    llava.write_text(json.dumps([{"id": "5", "conversations": []}]))
    with pytest.raises(DataError, match="llava_test_CQM-A.json holds the text, not the choices"):
        read_science_qa(llava)
    alone = tmp_path / "alone" / "problems.json"
    alone.parent.mkdir()
    alone.write_text(json.dumps(PROBLEMS))
    with pytest.raises(DataError, match="alone/pid_splits.json: no such file"):
        read_science_qa(alone)


# --- GQA ----------------------------------------------------------------------------------------------------

QUESTIONS = {
    "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no", "fullAnswer": "No, it is clear.",
                  "isBalanced": True, "types": {"structural": "verify", "semantic": "global", "detailed": "weather"}},
    "201640614": {"imageId": "n235859", "question": "Who is wearing the dress?", "answer": "woman",
                  "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    "202225914": {"imageId": "n235859", "question": "What color is the dress?", "answer": "white",
                  "types": {"structural": "query", "semantic": "attr", "detailed": "color"}},
}


def _gqa_files(tmp_path: Path) -> tuple[Path, Path]:
    questions = tmp_path / "gqa" / "testdev_balanced_questions.json"
    questions.parent.mkdir(parents=True)
    questions.write_text(json.dumps(QUESTIONS))
    images = tmp_path / "gqa" / "images"
    _save(images / "n161313.jpg", RED)
    _save(images / "n235859.jpg", BLUE)
    return questions, images


def test_gqa_questions_file_with_images_by_image_id(tmp_path):
    questions, images = _gqa_files(tmp_path)
    records = read_gqa(questions, images)
    assert [r["question_id"] for r in records] == ["201307251", "201640614", "202225914"]
    assert records[0] == {"question_id": "201307251", "question": "Is it overcast?", "image": "n161313.jpg",
                          "answer": "no", "types": QUESTIONS["201307251"]["types"]}
    assert records[0]["question"] + gqa.PROMPT_SUFFIX == (
        "Is it overcast?\nAnswer the question using a single word or phrase.")
    assert _near(_colour_of(records[0]["image"], images), RED) and _near(_colour_of(records[2]["image"], images), BLUE)
    # the folder holding images/ as the root (the CLI's default: the questions file's folder)
    assert [r["image"] for r in read_gqa(questions, questions.parent)][:2] == ["images/n161313.jpg",
                                                                                "images/n235859.jpg"]
    # a copy of the images in another format is found by its image id under the given root
    (images / "n161313.jpg").unlink()
    _save(images / "n161313.png", GREEN)
    assert read_gqa(questions, images)[0]["image"] == "n161313.png"
    assert read_gqa(questions, questions.parent)[0]["image"] == "images/n161313.png"
    assert read_gqa(questions)[0]["image"] == "n161313.jpg"  # no root: GQA's name, nothing looked up


def test_gqa_read_then_scored_binary_and_open(tmp_path):
    questions, images = _gqa_files(tmp_path)
    _, metrics = score_gqa(read_gqa(questions, images), {"201307251": "No.", "201640614": "Woman",
                                                         "202225914": "blue"})
    # "No." -> "no" right (verify: binary); "Woman" -> "woman" right, "blue" wrong (query: open)
    assert metrics == {"accuracy": 2 / 3, "n": 3, "binary": 1.0, "open": 0.5}


def _gqa_instructions(rows: list[tuple[str, str, str, str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "id": [r[0] for r in rows], "imageId": [r[1] for r in rows], "question": [r[2] for r in rows],
        "answer": [r[3] for r in rows], "fullAnswer": [r[3] for r in rows],
        "types": [{"structural": "query", "semantic": "attr", "detailed": "color"} for _ in rows]})


def _gqa_images(ids_colours: list[tuple[str, tuple]]) -> datasets.Dataset:
    return _table({"id": [i for i, _ in ids_colours], "image": [_image(c) for _, c in ids_colours]})


INSTRUCTION_ROWS = [("201640614", "n235859", "What color is the dress?", "white"),
                    ("201307251", "n161313", "What color is the sky?", "gray")]


def test_gqa_lmms_lab_configs_joined_on_image_id_in_each_layout(tmp_path):
    # a hub snapshot: one folder per config, parquet files named by split
    snapshot = tmp_path / "GQA"
    for name, table in (("testdev_balanced_instructions", _gqa_instructions(INSTRUCTION_ROWS)),
                        ("testdev_balanced_images", _gqa_images([("n161313", RED), ("n235859", BLUE)]))):
        (snapshot / name).mkdir(parents=True)
        table.to_parquet(str(snapshot / name / "testdev-00000-of-00001.parquet"))
    instructions = snapshot / "testdev_balanced_instructions"
    for path, image_root in ((snapshot, None), (snapshot, snapshot),  # the CLI passes the data folder itself
                             (instructions, None),  # the images config found beside the instructions
                             (instructions / "testdev-00000-of-00001.parquet", instructions)):
        records = read_gqa(path, image_root)
        assert [(r["question_id"], r["question"], r["answer"]) for r in records] == [
            ("201640614", "What color is the dress?", "white"), ("201307251", "What color is the sky?", "gray")]
        assert [_colour_of(r["image"]) for r in records] == [BLUE, RED]
    # save_to_disk folders under any names, the images save given as the image root
    _gqa_instructions(INSTRUCTION_ROWS).save_to_disk(str(tmp_path / "questions"))
    _gqa_images([("n161313", GREEN), ("n235859", GREY)]).save_to_disk(str(tmp_path / "pictures"))
    records = read_gqa(tmp_path / "questions", tmp_path / "pictures")
    assert [_colour_of(r["image"]) for r in records] == [GREY, GREEN]
    assert records[0]["types"] == {"structural": "query", "semantic": "attr", "detailed": "color"}
    _, metrics = score_gqa(records, {"201640614": "White", "201307251": "grey"})
    assert metrics == {"accuracy": 0.5, "n": 2, "open": 0.5}  # "grey" is not GQA's "gray"


def test_gqa_bad_input_is_an_error_naming_file_record_and_field(tmp_path):
    _gqa_instructions(INSTRUCTION_ROWS).save_to_disk(str(tmp_path / "questions"))
    with pytest.raises(DataError, match="keeps its images in a second config"):
        read_gqa(tmp_path / "questions")
    _gqa_images([("n161313", RED)]).save_to_disk(str(tmp_path / "pictures"))
    with pytest.raises(DataError, match="record '201640614', field 'imageId': image 'n235859' is not in the images"):
        read_gqa(tmp_path / "questions", tmp_path / "pictures")
    _gqa_instructions([INSTRUCTION_ROWS[1], INSTRUCTION_ROWS[1]]).save_to_disk(str(tmp_path / "twice"))
    with pytest.raises(DataError, match="record '201307251', field 'question_id': this question id appears twice"):
        read_gqa(tmp_path / "twice", tmp_path / "pictures")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"1": {"imageId": "n1", "question": "Is it?"}}))
    with pytest.raises(DataError, match="broken.json, record '1', field 'answer': no 'answer'"):
        read_gqa(broken)
    broken.write_text('{"1": {"imageId": "n1"}, "1": {"imageId": "n2"}}')
    with pytest.raises(DataError, match="broken.json, record '1': this key appears twice"):
        read_gqa(broken)
    broken.write_text("{")
    with pytest.raises(DataError, match="broken.json: not JSON"):
        read_gqa(broken)
    with pytest.raises(DataError, match="is one split already"):
        read_gqa(broken, split="testdev")
    llava = _json_lines(tmp_path / "llava_gqa_testdev_balanced.jsonl", [{"question_id": "1", "text": "?"}])
    with pytest.raises(DataError, match="llava_gqa_testdev_balanced.jsonl holds no answers"):
        read_gqa(llava)
    with pytest.raises(DataError, match="missing.json: no such file"):
        read_gqa(tmp_path / "missing.json")
