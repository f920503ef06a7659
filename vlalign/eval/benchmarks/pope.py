"""POPE (object hallucination, yes/no): the official scoring, and lmms-eval's.

official (POPE's and LLaVA-1.5's `eval_pope.py`): keep the answer's first sentence (up to the first "."),
drop commas, split on spaces; the answer is "no" when one of the words is "No", "no" or "not", else "yes".
So "Yes, there is a red circle." is yes and "There is no dog." is no. yes-ratio = share of answers read as
yes. Precision, recall and F1 treat "yes" as the positive class.

lmms-eval (`tasks/pope/utils.py`): the answer, lower-cased and stripped, must equal "yes" or "no" exactly;
anything else is wrong, and counts as neither a true positive nor a false negative. Its yes-ratio counts
the ground truth, not the answers (0.5 on balanced POPE).

Both: per split (random / popular / adversarial) and pooled; LLaVA papers quote the mean F1 of the splits.

Reading (`read_pope`), two forms:
- POPE's own files, `coco_pope_{random,popular,adversarial}.json` (POPE's `output/coco/`, which LLaVA-1.5
  takes as its `--annotation-dir`): JSON lines `{"question_id", "image", "text", "label"}`, the split in the
  file name. `path` is one such file or the folder holding them (all three, or the one `split` names).
  The ids restart at 1 in every file, so a record's `question_id` is `<split>/<question_id>` ("random/1").
  `image` is the COCO val2014 file name, relative to `image_root` (the val2014 folder), as LLaVA's
  `--image-folder` takes it. LLaVA-1.5 used POPE at commit e3e3926 (random: 2910 questions); POPE's later
  files and lmms-lab's have 3000 per split.
- lmms-lab/POPE as the `datasets` library saves it (columns question_id, question, answer, image_source,
  image, category; one split "test" holding all three categories, or the "Full" config's splits named after
  them): `question_id` is `<category>/<question_id>` as above, `image` the embedded bytes.
LLaVA's `llava_pope_test.jsonl` holds no labels (they stay in the coco_pope files), so it is refused with
a pointer to those files. The question is POPE's text as is; LLaVA-1.5 asks it followed by PROMPT_SUFFIX
(checked against every line of LLaVA's llava_pope_test.jsonl and lmms-eval's `pope.yaml`).
"""

from __future__ import annotations

from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks.common import (Decision, Scoring, check_scoring, json_object_line, prediction_for, ratio,
                                            required_field, unique_question_ids, yes_or_no)
from vlalign.eval.benchmarks.tables import image_ref, is_table, read_rows

NEGATIVE_WORDS = ("No", "no", "not")
SPLITS = ("adversarial", "popular", "random")
# LLaVA-1.5's evaluation instruction (its llava_pope_test.jsonl; lmms-eval's pope.yaml post_prompt)
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
# LLaVA-1.5: model_vqa_loader.py's default --max_new_tokens, which scripts/v1_5/eval/pope.sh keeps;
# lmms-eval's pope.yaml generates 128 as well
MAX_NEW_TOKENS = 128
LMMS_EVAL_MAX_NEW_TOKENS = 128


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


def _split_of(file: Path) -> str:
    """POPE names its files `<dataset>_pope_<split>.json`; eval_pope.py reads the split from the name too."""
    split = file.stem.rsplit("_", 1)[-1]
    if split not in SPLITS:
        raise DataError(f"cannot tell the POPE split from the file name (want *_pope_{{{','.join(SPLITS)}}}.json)",
                        reason="bad_split", file=str(file))
    return split


def _json_lines(file: Path) -> list[tuple[int, dict]]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", reason="bad_json", file=str(file)) from exc
    return [(number, json_object_line(line, number, file))
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _file_record(row: dict, split: str, file: Path, number: int) -> dict:
    question_id = f"{split}/{required_field(row, 'question_id', file, f'line {number}')}"
    label = yes_or_no(required_field(row, "label", file, question_id), file, question_id, "label")
    return {"question_id": question_id, "question": str(required_field(row, "text", file, question_id)),
            "image": str(required_field(row, "image", file, question_id)), "label": label, "category": split}


def _file_records(file: Path) -> list[dict]:
    rows = _json_lines(file)
    if rows and "label" not in rows[0][1] and "category" in rows[0][1]:
        raise DataError("this is LLaVA's question file (llava_pope_test.jsonl), which holds no labels; read the "
                        "coco_pope_*.json files it was made from instead (LLaVA's --annotation-dir)",
                        reason="no_labels", file=str(file))
    split = _split_of(file)
    return [_file_record(row, split, file, number) for number, row in rows]


def _pope_files(path: Path, split: str | None) -> list[Path]:
    if not path.exists():
        raise DataError("no such file or folder", reason="missing_file", file=str(path))
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob("coco_pope_*.json"))
        if not files:
            raise DataError("no coco_pope_{random,popular,adversarial}.json in this folder", reason="missing_file",
                            file=str(path))
    if split is not None:
        files = [file for file in files if _split_of(file) == split]
        if not files:
            raise DataError(f"no POPE file of split {split!r} (POPE's splits: {', '.join(SPLITS)})",
                            reason="bad_split", file=str(path))
    return files


def _table_record(row: dict, index: int, path: Path) -> dict:
    category = str(required_field(row, "category", path, f"row {index}"))
    if category not in SPLITS:
        raise DataError(f"unknown POPE category {category!r}; POPE's are {', '.join(SPLITS)}", reason="bad_split",
                        file=str(path), record_id=f"row {index}", field="category")
    question_id = f"{category}/{required_field(row, 'question_id', path, f'row {index}')}"
    image = image_ref(required_field(row, "image", path, question_id), row_id=question_id)
    if image is None:
        raise DataError("no image", reason="missing_field", file=str(path), record_id=question_id, field="image")
    label = yes_or_no(required_field(row, "answer", path, question_id), path, question_id, "label")
    return {"question_id": question_id, "question": str(required_field(row, "question", path, question_id)).strip(),
            "image": image, "label": label, "category": category}


def read_pope(path: Path, image_root: Path | None = None, split: str | None = None) -> list[dict]:
    """POPE's questions (the two forms in the module docstring), in file order: `question_id`, `question`,
    `image` (a val2014 file name relative to `image_root`, or bytes), `label` yes|no, `category` (the split).
    `image_root` is not needed: POPE names each image by its file name, which stays relative to it."""
    path = Path(path)
    if is_table(path):
        return unique_question_ids([_table_record(row, index, path)
                                    for index, row in enumerate(read_rows(path, split))], path)
    return unique_question_ids([record for file in _pope_files(path, split) for record in _file_records(file)], path)
