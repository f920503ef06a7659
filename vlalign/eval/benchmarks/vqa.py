"""VQAv2 and TextVQA (short open answers, 10 human answers per question): the official soft accuracy, and
lmms-eval's.

Accuracy of one answer: the mean, over the 10 ways of leaving one human answer out, of min(1, matches among
the other 9 / 3). 2 of 10 humans agreeing give (2 x 1/3 + 8 x 2/3) / 10 = 0.6, 3 give 0.9, 4 or more 1.0.

EvalAI's normaliser (GT-Vision-Lab's `vqaEval.py`): newlines and tabs become spaces, the ends are stripped;
each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted where it touches a space ("left - right") or
where the text has a comma between digits ("1,000" -> "1000"), else replaced by a space ("t-shirt" ->
"t shirt"); a period not followed by a digit is deleted ("Two." -> "Two"; "2.5" stays); then lower-case,
the number words none/zero..ten -> digits, the articles a/an/the dropped, and the contractions table
("dont" -> "don't"). m4c's EvalAIAnswerProcessor (mmf) first lower-cases, deletes every "," and "?" and
splits "'s" off ("man's" -> "man 's").

VQAv2, official: LLaVA-1.5's `convert_vqav2_for_submission.py` passes each answer through m4c's processor;
the evaluation (`vqaEval.py`, what the EvalAI server runs) then normalises the answer and the human answers
again, but only when the 10 human answers are not all the same: ten "t-shirt" are compared as written, so the
submitted "t shirt" scores 0; and the "'s" split makes "Man's" miss "man's". lmms-eval (`tasks/vqav2/
utils.py`): normalises both sides always, without m4c's first step ("Man's" matches "man's"). Metrics
overall, per answer type (yes/no, number, other) and per question type.

TextVQA, official: LLaVA-1.5's `eval_textvqa.py` with m4c's TextVQAAccuracyEvaluator: m4c's processor on the
answer and on each human answer (always), then the leave-one-out mean, which needs exactly 10 human answers.
lmms-eval (`tasks/textvqa/utils.py`): the same processor and mean, over however many human answers there are.
Its prompt differs: the question capitalised, no OCR tokens. LLaVA-1.5's prompts carry a line "Reference OCR
token: a, b, ..." after the question (its `llava_textvqa_val_v051_ocr.jsonl`); `read_textvqa` writes it from
the OCR tokens (`ocr=False`: the question alone, as lmms-eval asks it).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlalign.errors import DataError
from vlalign.eval.benchmarks import tables
from vlalign.eval.benchmarks.common import (Decision, Scoring, check_scoring, load_json_file, prediction_for, ratio,
                                            required_field, top_level_list, unique_question_ids)

# LLaVA-1.5's evaluation instruction for both (docs/Evaluation.md's short-answer format, its
# llava_vqav2_mscoco_test-dev2015.jsonl / llava_textvqa_val_v051_ocr.jsonl; lmms-eval's post_prompt)
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
# LLaVA-1.5: model_vqa_loader.py's default --max_new_tokens, which vqav2.sh and textvqa.sh keep; lmms-eval
# generates 16 for VQAv2 (its vqav2 template) and its llava model's default 1024 for TextVQA (none set)
MAX_NEW_TOKENS = 128
LMMS_EVAL_MAX_NEW_TOKENS = 16
TEXTVQA_LMMS_EVAL_MAX_NEW_TOKENS = 1024

CONTRACTIONS = dict(pair.split("=") for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've
    hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's
    Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
    let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
    mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
    'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
    someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
    somethingd=something'd somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's
    theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
    wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
    whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
    who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
    wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
    y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())  # EvalAI's table as written (its capitalised keys can never match: words are lower-cased first)
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
# vqaEval.py writes "(?!<=\d)(\.)(?!\d)": its first group is a look-ahead (meant as a look-behind) that
# cannot fail in front of a ".", so the rule is "a period not followed by a digit". It also passes
# re.UNICODE (32) where `sub` takes its count, so at most 32 periods go.
PERIOD = re.compile(r"\.(?!\d)")
PERIOD_LIMIT = 32
COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")  # vqaEval.py
COMMAS_BETWEEN_DIGITS = re.compile(r"\d,+\d")  # m4c and lmms-eval


def strip_punctuation(text: str, digit_comma: re.Pattern = COMMA_BETWEEN_DIGITS) -> str:
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text  # looked up in the text as given, not `out`
        out = out.replace(mark, "" if touches_space or delete_all else " ")
    return PERIOD.sub("", out, count=PERIOD_LIMIT)


def digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize(text: str, digit_comma: re.Pattern = COMMA_BETWEEN_DIGITS) -> str:
    """vqaEval.py's processPunctuation then processDigitArticle (lmms-eval: with m4c's comma pattern)."""
    return digits_and_articles(strip_punctuation(text, digit_comma))


def evalai_answer(text: str) -> str:
    """m4c's EvalAIAnswerProcessor, which LLaVA-1.5 applies to VQAv2 answers and TextVQA uses on both sides."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize(whitespace(text), COMMAS_BETWEEN_DIGITS)


def leave_one_out_accuracy(answer: str, humans: list[str]) -> float:
    matches = sum(human == answer for human in humans)
    per_subset = [min(1.0, (matches - (human == answer)) / 3) for human in humans]
    return sum(per_subset) / len(per_subset) if per_subset else 0.0


def judge_vqav2_official(text: str, humans: list[str]) -> tuple[str, float]:
    answer = whitespace(evalai_answer(text))
    humans = [whitespace(human) for human in humans]
    if len(set(humans)) > 1:  # vqaEval.py normalises only when the humans disagree
        humans = [normalize(human) for human in humans]
        answer = normalize(answer)
    return answer, leave_one_out_accuracy(answer, humans)


def judge_vqav2_lmms_eval(text: str, humans: list[str]) -> tuple[str, float]:
    answer = normalize(whitespace(text), COMMAS_BETWEEN_DIGITS)
    humans = [normalize(whitespace(human), COMMAS_BETWEEN_DIGITS) for human in humans]
    return answer, leave_one_out_accuracy(answer, humans)


def judge_textvqa(text: str, humans: list[str]) -> tuple[str, float]:
    answer = evalai_answer(text)
    return answer, leave_one_out_accuracy(answer, [evalai_answer(human) for human in humans])


@dataclass(frozen=True)
class SoftDecision(Decision):
    score: float  # the soft accuracy; `correct` means full credit (score 1.0)


def _human_answers(question: dict, benchmark: str, exactly: int | None) -> list[str]:
    qid = str(question.get("question_id"))
    answers = question.get("answers")
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{benchmark} question has no human answers", reason="missing_field", record_id=qid,
                        field="answers")
    if exactly is not None and len(answers) != exactly:  # m4c's evaluator asserts 10
        raise DataError(f"{benchmark} question has {len(answers)} human answers; the official evaluator needs "
                        f"{exactly}", reason="bad_field", record_id=qid, field="answers")
    return [str(answer) for answer in answers]


def _decide(questions: list[dict], predictions: dict[str, str], benchmark: str,
            judge: Callable[[str, list[str]], tuple[str, float]], exactly: int | None) -> list[SoftDecision]:
    decisions = []
    for question in questions:
        qid = str(question["question_id"])
        humans = _human_answers(question, benchmark, exactly)
        text = prediction_for(predictions, qid, benchmark)
        parsed, score = judge(text, humans)
        gold = question.get("multiple_choice_answer") or Counter(humans).most_common(1)[0][0]
        decisions.append(SoftDecision(qid, text, parsed, str(gold), score >= 1.0, score))
    return decisions


def _mean_by(decisions: list[SoftDecision], keys: list) -> dict[str, dict]:
    groups: dict[str, list[float]] = {}
    for decision, key in zip(decisions, keys):
        if key is not None:
            groups.setdefault(str(key), []).append(decision.score)
    return {key: {"accuracy": ratio(sum(scores), len(scores)), "n": len(scores)} for key, scores in groups.items()}


def _overall(decisions: list[SoftDecision]) -> dict:
    return {"accuracy": ratio(sum(d.score for d in decisions), len(decisions)), "n": len(decisions)}


def score_vqav2(questions: list[dict], predictions: dict[str, str],
                scoring: Scoring = "official") -> tuple[list[SoftDecision], dict]:
    """`questions`: records with `question_id`, `answers` (the human answers), optionally `answer_type`,
    `question_type`, `multiple_choice_answer`. Returns the decisions in question order and {"accuracy", "n",
    "answer_types": {type: {"accuracy", "n"}}, "question_types": {...}} (accuracies 0..1)."""
    check_scoring(scoring)
    judge = judge_vqav2_official if scoring == "official" else judge_vqav2_lmms_eval
    decisions = _decide(questions, predictions, "VQAv2", judge, None)
    return decisions, {**_overall(decisions),
                       "answer_types": _mean_by(decisions, [q.get("answer_type") for q in questions]),
                       "question_types": _mean_by(decisions, [q.get("question_type") for q in questions])}


def score_textvqa(questions: list[dict], predictions: dict[str, str],
                  scoring: Scoring = "official") -> tuple[list[SoftDecision], dict]:
    """`questions`: records with `question_id` and `answers`. Returns the decisions and {"accuracy", "n"}."""
    check_scoring(scoring)
    decisions = _decide(questions, predictions, "TextVQA", judge_textvqa, 10 if scoring == "official" else None)
    return decisions, _overall(decisions)


# ---- readers ---------------------------------------------------------------------------------------------

def _load_json(path: Path):
    """VQAv2's and TextVQA's files keep their records in lists (their ids checked by unique_question_ids), and
    a key given twice in one object has never been refused here."""
    return load_json_file(path, duplicate_keys_ok=True)


def _answer_texts(answers, *, file: str, record_id: str) -> list[str]:
    """VQAv2 keeps {"answer", "answer_confidence", "answer_id"} per human; TextVQA plain strings."""
    if not isinstance(answers, list):
        raise DataError("'answers' is not a list", reason="bad_field", file=file, record_id=record_id,
                        field="answers")
    return [str(required_field(a, "answer", file=file, record_id=record_id)) if isinstance(a, dict) else str(a)
            for a in answers]


def _vqav2_files(path: Path, split: str | None) -> tuple[Path, Path]:
    if path.is_dir():
        found = sorted(p for p in path.glob("*_questions.json") if split is None or split in p.name)
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise DataError(f"expected one *_questions.json{f' with {split!r} in its name' if split else ''} "
                            f"(found {names}); pass the questions file or --split", reason="missing_file",
                            file=str(path))
        path = found[0]
    annotations = path.with_name(path.name.replace("OpenEnded_", "").replace("_questions", "_annotations"))
    if annotations == path:
        raise DataError("cannot tell the annotations file from this name (expected *_questions.json)",
                        reason="missing_file", file=str(path))
    return path, annotations


def _vqav2_record(question: dict, annotation: dict, image: tables.ImageRef, file: str) -> dict:
    qid = str(question["question_id"])
    return {"question_id": qid, "question": str(required_field(question, "question", file=file, record_id=qid)),
            "image": image, "image_id": question.get("image_id"),
            "answers": _answer_texts(required_field(annotation, "answers", file=file, record_id=qid), file=file,
                                     record_id=qid),
            "answer_type": annotation.get("answer_type"), "question_type": annotation.get("question_type"),
            "multiple_choice_answer": annotation.get("multiple_choice_answer")}


def _vqav2_official(path: Path, split: str | None) -> list[dict]:
    questions_file, annotations_file = _vqav2_files(path, split)
    document = _load_json(questions_file)
    questions = top_level_list(document, "questions", questions_file)
    subtype = required_field(document, "data_subtype", file=str(questions_file), record_id="top level")  # val2014
    annotations = {}
    for position, row in enumerate(top_level_list(_load_json(annotations_file), "annotations", annotations_file)):
        qid = str(required_field(row, "question_id", file=str(annotations_file), record_id=f"#{position}"))
        annotations[qid] = row
    records = []
    for position, question in enumerate(questions):
        qid = str(required_field(question, "question_id", file=str(questions_file), record_id=f"#{position}"))
        image_id = required_field(question, "image_id", file=str(questions_file), record_id=qid)
        if qid not in annotations:
            raise DataError(f"question {qid!r} has no annotation", reason="missing_annotation",
                            file=str(annotations_file), record_id=qid)
        image = f"COCO_{subtype}_{int(image_id):012d}.jpg"
        records.append(_vqav2_record(question, annotations[qid], image, str(questions_file)))
    return unique_question_ids(records, questions_file, name_id=True)


def read_vqav2(path: str | Path, image_root: str | Path | None = None, split: str | None = None) -> list[dict]:
    """VQAv2 questions with their 10 human answers. `path`: the questions file
    (`v2_OpenEnded_mscoco_val2014_questions.json`) with its annotations file (`v2_mscoco_val2014_annotations.json`)
    beside it, or a folder holding both (several question files: `split` picks the one whose name contains
    it, e.g. "val2014"), or lmms-lab/VQAv2 as the `datasets` library saves it (`split`: validation, ...).
    Images: `COCO_val2014_{image_id:012d}.jpg`, relative to `image_root` (the val2014 folder), or the
    embedded bytes."""
    path = Path(path)
    if not tables.is_table(path):
        return _vqav2_official(path, split)
    records = []
    for position, row in enumerate(tables.read_rows(path, split)):
        qid = str(required_field(row, "question_id", file=str(path), record_id=f"#{position}"))
        records.append(_vqav2_record(row, row, tables.image_ref(row.get("image"), row_id=qid), str(path)))
    return unique_question_ids(records, path, name_id=True)


def _rosetta_tokens(path: Path) -> dict[str, list] | None:
    """OCR tokens by image id from TextVQA's `TextVQA_Rosetta_OCR_v0.2_<set>.json` beside the questions."""
    ocr_file = path.with_name(path.name.replace("TextVQA_0.5.1_", "TextVQA_Rosetta_OCR_v0.2_"))
    if ocr_file == path or not ocr_file.is_file():
        return None
    rows = top_level_list(_load_json(ocr_file), "data", ocr_file)
    return {str(required_field(row, "image_id", file=str(ocr_file), record_id=f"#{n}")): row.get("ocr_tokens") or []
            for n, row in enumerate(rows)}


def _with_ocr(question: str, tokens) -> str:
    """LLaVA-1.5's layout; an image without OCR tokens gets no such line (its `eval_textvqa.py` accepts both)."""
    return f"{question}\nReference OCR token: {', '.join(map(str, tokens))}" if tokens else question


def _textvqa_record(row: dict, qid: str, image: tables.ImageRef, tokens, file: str) -> dict:
    question = str(required_field(row, "question", file=file, record_id=qid))
    answers = _answer_texts(required_field(row, "answers", file=file, record_id=qid), file=file, record_id=qid)
    return {"question_id": qid, "question": _with_ocr(question, tokens), "image": image,
            "image_id": row.get("image_id"), "answers": answers}


def _ocr_tokens(row, by_image: dict | None, ocr: bool, *, file: str, record_id: str):
    if not ocr:
        return None
    if isinstance(row.get("ocr_tokens"), list):
        return row["ocr_tokens"]
    image_id = str(row.get("image_id"))
    if by_image is None or image_id not in by_image:
        raise DataError(f"no OCR tokens for image {image_id!r} (neither an 'ocr_tokens' field nor the Rosetta "
                        "OCR file beside the questions); ocr=False asks the question alone", reason="missing_ocr",
                        file=file, record_id=record_id, field="ocr_tokens")
    return by_image[image_id]


def read_textvqa(path: str | Path, image_root: str | Path | None = None, split: str | None = None, *,
                 ocr: bool = True) -> list[dict]:
    """TextVQA questions with their 10 human answers. `path`: `TextVQA_0.5.1_val.json` (a folder: the
    `TextVQA_0.5.1_<split or val>.json` in it), or lmms-lab/textvqa as the `datasets` library saves it.
    `ocr`: the question is followed by LLaVA-1.5's "Reference OCR token: ..." line, from each record's
    `ocr_tokens` (lmms-lab's column) or else `TextVQA_Rosetta_OCR_v0.2_<set>.json` beside the questions.
    Images: `train_images/{image_id}.jpg` (test questions: `test_images/`) relative to `image_root` (where
    train_val_images.zip was extracted), or the embedded bytes."""
    path = Path(path)
    table = tables.is_table(path)
    if table:
        rows, by_image = tables.read_rows(path, split), None
    else:
        if path.is_dir():
            path = path / f"TextVQA_0.5.1_{split or 'val'}.json"
        rows = top_level_list(_load_json(path), "data", path)
        by_image = _rosetta_tokens(path) if ocr else None
    records = []
    for position, row in enumerate(rows):
        qid = str(required_field(row, "question_id", file=str(path), record_id=f"#{position}"))
        tokens = _ocr_tokens(row, by_image, ocr, file=str(path), record_id=qid)
        if table:
            image = tables.image_ref(row.get("image"), row_id=qid)
        else:
            folder = "test_images" if row.get("set_name") == "test" else "train_images"
            image = f"{folder}/{required_field(row, 'image_id', file=str(path), record_id=qid)}.jpg"
        records.append(_textvqa_record(row, qid, image, tokens, str(path)))
    return unique_question_ids(records, path, name_id=True)
