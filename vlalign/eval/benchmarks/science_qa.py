"""ScienceQA(-IMG): the official letter parsing (LLaVA-1.5's `eval_science_qa.py`), and lmms-eval's.

official: newlines become ". "; the answer is a letter when the stripped text is one of A-E, or the text
starts with "<letter>. ", or it contains "The answer is <letter>" (with or without the period); anything
else is FAILED. A letter beyond the problem's choices is wrong. So "The answer is B." is B, while
"A circle" is FAILED (not option A: no ". " after the letter) and a lower-case "b" is FAILED too.
lmms-eval (`tasks/scienceqa/utils.py`): the text stripped; right when it equals the letter ignoring case
(" b " is B), or starts with an upper-case letter and "." and that letter is the answer; "The answer is
B." is wrong.

IMG accuracy (what LLaVA papers report as SQA-IMG) is the accuracy over the problems that have an image.

Reading (`read_science_qa`), two forms:
- ScienceQA's own files (its `data/scienceqa/`): `problems.json` ({pid: {question, choices, answer (index),
  hint, image ("image.png" or null), split, ...}}) and `pid_splits.json` ({split: [pid, ...]}); `path` is
  the folder holding them or problems.json. `split` (default "test") picks the pids, in pid_splits' order;
  a record's `question_id` is the pid. Images are at `images/<problem's split>/<pid>/<image>` (ScienceQA's
  tools/download.sh unpacks them there): the absolute path of that file beside problems.json where it is
  there, else the relative path under `image_root` (a folder holding `images/`); a text-only problem has
  image None. All problems of the split are read (ScienceQA-FULL); the scorer's `img_accuracy` is SQA-IMG.
- lmms-lab/ScienceQA as the `datasets` library saves it (config ScienceQA-IMG or ScienceQA-FULL; columns
  image (None for text-only), question, choices, answer, hint, ...). It has no pid column, so `question_id`
  is the row's `id` / `pid` where there is one, else its index in the split.
The question is LLaVA-1.5's (its llava_test_CQM-A.json, which model_vqa_science.py reads, less the
`<image>` tag it strips): "Context: <hint>\n" when the hint is not empty, the question, then one line
"A. <choice>" per choice, the whole stripped; lmms-eval's `scienceqa.yaml` poses the same text (not the
"Context: ...\nQuestion: ...\nOptions: (A) ..." of LLaVA's convert_sqa_to_llava.py, which 1.5 does not
use). LLaVA's llava_test_CQM-A.json holds the text but not the choices, and is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks.common import (Decision, Scoring, check_scoring, load_json_file, prediction_for, ratio,
                                            required_field, unique_question_ids)
from vlalign.eval.benchmarks.tables import image_ref, is_table, read_rows

LETTERS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
DEFAULT_SPLIT = "test"
# LLaVA-1.5's evaluation instruction (model_vqa_science.py --single-pred-prompt, which scripts/v1_5/eval/sqa.sh
# passes; lmms-eval's scienceqa.yaml post_prompt)
PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# LLaVA-1.5: model_vqa_science.py generates up to 1024 tokens (hard-coded; a letter ends at the first EOS
# long before); lmms-eval's scienceqa.yaml generates 16
MAX_NEW_TOKENS = 1024
LMMS_EVAL_MAX_NEW_TOKENS = 16
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
    text = text.strip()
    if text.upper() in LETTERS:
        return text.upper()
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


def llava_question(hint: str, question: str, choices: list[str]) -> str:
    """The problem as LLaVA-1.5 poses it, before PROMPT_SUFFIX (see the module docstring)."""
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{context}{question}\n{options}".strip()


def _choices_and_answer(row: dict, file: Path, record: str) -> tuple[list[str], int]:
    choices, answer = required_field(row, "choices", file, record), required_field(row, "answer", file, record)
    if not isinstance(choices, list) or not 1 <= len(choices) <= len(LETTERS):
        raise DataError(f"choices must be a list of 1 to {len(LETTERS)} options, got {choices!r}",
                        reason="bad_field", file=str(file), record_id=record, field="choices")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"answer must be the index of one of the {len(choices)} choices, got {answer!r}",
                        reason="bad_field", file=str(file), record_id=record, field="answer")
    return [str(choice) for choice in choices], answer


def _problem_record(pid: str, problems: dict, split: str, file: Path, image_root: Path | None) -> dict:
    if not isinstance(problems.get(pid), dict):
        raise DataError("pid_splits.json names this pid, problems.json has no such problem", reason="missing_record",
                        file=str(file), record_id=pid)
    problem = problems[pid]
    choices, answer = _choices_and_answer(problem, file, pid)
    image = None
    if problem.get("image"):  # a problem's images sit under its own split (a minitest pid's under test)
        relative = Path("images") / str(problem.get("split") or split) / pid / str(problem["image"])
        own = file.parent / relative
        image = str(own.absolute()) if image_root is None or own.is_file() else str(relative)
    question = llava_question(str(problem.get("hint") or ""), str(required_field(problem, "question", file, pid)),
                              choices)
    return {"question_id": pid, "question": question, "image": image, "choices": choices, "answer": answer}


def _official_records(path: Path, image_root: Path | None, split: str | None) -> list[dict]:
    problems_file = path if path.is_file() else path / "problems.json"
    problems = load_json_file(problems_file)
    if not isinstance(problems, dict):
        hint = " (LLaVA's llava_test_CQM-A.json holds the text, not the choices)" if isinstance(problems, list) else ""
        raise DataError(f"expected ScienceQA's problems.json, an object of problems by pid{hint}",
                        reason="bad_format", file=str(problems_file))
    splits_file = problems_file.parent / "pid_splits.json"
    splits, split = load_json_file(splits_file), split or DEFAULT_SPLIT
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        known = ", ".join(splits) if isinstance(splits, dict) else "none"
        raise DataError(f"no split {split!r} (it has {known})", reason="bad_split", file=str(splits_file))
    return [_problem_record(str(pid), problems, split, problems_file, image_root) for pid in splits[split]]


def _row_id(row: dict, index: int) -> str:
    for key in ("question_id", "id", "pid"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def _table_record(row: dict, index: int, path: Path) -> dict:
    question_id = _row_id(row, index)
    choices, answer = _choices_and_answer(row, path, question_id)
    question = llava_question(str(row.get("hint") or ""), str(required_field(row, "question", path, question_id)),
                              choices)
    return {"question_id": question_id, "question": question,
            "image": image_ref(row.get("image"), row_id=question_id), "choices": choices, "answer": answer}


def read_science_qa(path: Path, image_root: Path | None = None, split: str | None = None) -> list[dict]:
    """ScienceQA's problems (the two forms in the module docstring): `question_id`, `question`, `image` (a
    path, bytes, or None for a text-only problem), `choices`, `answer` (the index of the right choice)."""
    path = Path(path)
    if is_table(path):
        return unique_question_ids([_table_record(row, index, path)
                                    for index, row in enumerate(read_rows(path, split))], path)
    if not path.exists():
        raise DataError("no such file or folder", reason="missing_file", file=str(path))
    return unique_question_ids(_official_records(path, image_root, split), path)
