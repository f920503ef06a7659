"""MMBench (single choice, 2-4 options, CircularEval): the official rule-based scoring, and lmms-eval's.

CircularEval: a question with k options is asked k times, the options rotated one step each pass (pass r shows
original option (i + r) mod k under letter i, as LLaVA's `model_vqa_mmbench.py --all-rounds` and VLMEvalKit's
circularisation do); the question is right only when every pass is. Metrics: that circular accuracy overall,
per category and per l2-category, and the vanilla accuracy of pass 0 alone.

Reading a letter, official (VLMEvalKit's `can_infer`, the rule-based step MMBench's evaluation takes before any
GPT judge): a refusal ("Cannot determine the answer", ...) is Z; with `.()[],:;!*#{}` turned into spaces, the
one option letter that is a word among the answer's last 4 words ("B", "B. red", "(C)", "The answer is B.",
but also "A red car" -> A); else no letter and a word "Z" -> Z; else "answer is X" (any case, optional
**bold**); else the one option whose text is in the lower-cased answer, if the answer is at most twice as long
as the option texts together ("It is red." -> the option "red"). Nothing matched: VLMEvalKit would ask the GPT
judge; there is none here, so the pass is wrong, as in VLMEvalKit's `exact_matching` mode.
lmms-eval (`tasks/mmbench/mmbench_evals.py`, the older VLMEvalKit matcher): the answer split on spaces with its
punctuation kept; exactly one of A-E as a word (not when "A" is a word of a 4+ word answer: an article), else
exactly one written "X." "X," "X:" "X)" "(X)" ":X" ...; else the one option text in the answer (no length
limit); what stays unmatched goes, as its judge-free `mmbench_en_dev_static` task does, to `_task_utils/
mcq_extract.py` (the last "(X)", "X.", "X:", "X)" or "X " or a letter after "the answer is" ..., preferring
a letter that starts or ends the answer, else any capital A-D at all).

Files: the official TSVs already hold every rotated pass (index + r x 1,000,000, its `image` cell naming the
first pass's index; lmms-lab/MMBench keeps them too); a file without them is expanded here, pass r getting
question id index + r x 1,000,000.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks import tables
from vlalign.eval.benchmarks.common import (Decision, Scoring, check_scoring, prediction_for, ratio,
                                            unique_question_ids)

# LLaVA-1.5's evaluation instruction (model_vqa_mmbench.py --single-pred-prompt; lmms-eval's post_prompt)
PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# LLaVA-1.5: model_vqa_mmbench.py's fixed max_new_tokens; lmms-eval's mmbench template sets 1024 too
MAX_NEW_TOKENS = 1024
LMMS_EVAL_MAX_NEW_TOKENS = 1024
LETTERS = "ABCD"
PASS_OFFSET = 1_000_000  # index of pass r = index of pass 0 + r x PASS_OFFSET (MMBench's convention)
FAILED = "FAILED"
REFUSED = "Z"  # VLMEvalKit's "the model declined"; never an option, so always wrong
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
IMAGE_REFERENCE_MAX = 64  # VLMEvalKit: an `image` cell this short names the row whose image it shares


def _letter_word(answer: str, options: dict[str, str]) -> str | None:
    words = SEPARATORS.sub(" ", answer).split()
    found = [letter for letter in options if letter in words]
    if len(found) == 1:
        if words.index(found[0]) > len(words) - 5:  # among the last 4 words
            return found[0]
    elif not found and REFUSED in words:
        return REFUSED
    match = ANSWER_IS.search(answer)
    return match.group(1).upper() if match and match.group(1).upper() in options else None


def _option_text_official(answer: str, options: dict[str, str]) -> str | None:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in options.values()):
        return None
    found = [letter for letter, text in options.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def parse_official(answer: str, options: dict[str, str]) -> str:
    """VLMEvalKit's can_infer: the letter, Z (refused) or FAILED (the GPT judge's case: wrong here)."""
    if any(refusal in answer for refusal in REFUSALS):
        return REFUSED
    return _letter_word(answer, options) or _option_text_official(answer, options) or FAILED


LMMS_LETTERS = "ABCDE"  # lmms-eval's can_infer_option looks for E as well, whatever the options
LMMS_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
              (":", ","), (":", "."), (":", ")"), (":", ")."))


def _letter_word_lmms(answer: str) -> str | None:
    words = answer.split()
    found = [letter for letter in LMMS_LETTERS if letter in words]
    if len(found) == 1 and not ("A" in words and len(words) > 3):  # "A" in a sentence may be the article
        return found[0]
    for prefix, suffix in LMMS_FORMS:
        found = [letter for letter in LMMS_LETTERS if prefix + letter + suffix in words]
        if len(found) == 1:
            return found[0]
    return None


def _option_text_lmms(answer: str, options: dict[str, str]) -> str | None:
    found = [letter for letter, text in options.items() if text.lower() in answer.lower()]
    return found[0] if len(found) == 1 else None


ANSWER_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                  "best answer is", "the correct option is", "correct option is", "the best option is",
                  "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
                  "i choose", "i select", "i pick", "my answer is", "my choice is",
                  "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
FORM_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
                 "space": 2, "fallback": 0}
FORM_PATTERNS = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                 ("space", "{} "))


def _extract_candidates(text: str, letters: list[str]) -> list[tuple[str, int, str]]:
    candidates = [(letter, text.rfind(pattern.format(letter)), form) for form, pattern in FORM_PATTERNS
                  for letter in letters if pattern.format(letter) in text]
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        start = lowered.find(phrase)
        if start != -1:
            candidates += [(letter, text.find(letter, start + len(phrase)), "phrase") for letter in letters
                           if text.find(letter, start + len(phrase)) != -1]
    bare = text.strip()
    candidates += [(letter, 0, "start") for letter in letters
                   if bare.startswith(letter) and (len(bare) == 1 or not bare[1].isalpha())]
    candidates += [(letter, len(text) - 1, "end") for letter in letters
                   if bare.endswith(letter) and (len(bare) == 1 or not bare[-2].isalpha())]
    return candidates or [(letter, text.rfind(letter), "fallback") for letter in letters if letter in text]


def extract_mcq_lmms(answer: str, letters: list[str]) -> str | None:
    """lmms-eval's extract_mcq_answer: the best-ranked form, the later one among equals."""
    if not answer.strip():
        return None
    text = answer.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    candidates = _extract_candidates(f" {text} ", letters)
    if not candidates:
        return None
    return max(candidates, key=lambda c: (FORM_PRIORITY[c[2]], c[1]))[0]


def parse_lmms_eval(answer: str, options: dict[str, str]) -> str:
    return (_letter_word_lmms(answer) or _option_text_lmms(answer, options)
            or extract_mcq_lmms(answer, sorted(options)) or FAILED)


def _by(hits: dict[str, bool], firsts: dict[str, dict], field: str) -> dict[str, dict]:
    groups: dict[str, list[bool]] = {}
    for index, hit in hits.items():
        if firsts[index].get(field) is not None:
            groups.setdefault(str(firsts[index][field]), []).append(hit)
    return {name: {"accuracy": ratio(sum(marks), len(marks)), "n": len(marks)} for name, marks in groups.items()}


def score_mmbench(questions: list[dict], predictions: dict[str, str],
                  scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: one record per pass with `question_id`, `index` (the question all its passes share),
    `rotation` (0 = the options as published), `options` ({letter: text} as shown), `answer` (the letter in
    this pass), `category`, `l2_category`. Returns the decisions per pass and {"circular_accuracy",
    "n_questions", "n_passes", "vanilla_accuracy", "n_vanilla", "categories": {name: {"accuracy", "n"}},
    "l2_categories": {...}} (circular accuracies per question)."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, hits, firsts, vanilla = [], {}, {}, []
    for question in questions:
        qid, options = str(question["question_id"]), question["options"]
        if question.get("answer") not in options:
            raise DataError(f"MMBench answer must be one of {', '.join(options)}, got {question.get('answer')!r}",
                            reason="bad_field", record_id=qid, field="answer")
        text = prediction_for(predictions, qid, "MMBench")
        parsed = parse(text, options)
        decision = Decision(qid, text, parsed, question["answer"], parsed == question["answer"])
        decisions.append(decision)
        index = str(question.get("index", qid))
        hits[index] = hits.get(index, True) and decision.correct
        if question.get("rotation", 0) == 0:
            vanilla.append(decision.correct)
        if index not in firsts or question.get("rotation", 0) == 0:
            firsts[index] = question
    return decisions, {"circular_accuracy": ratio(sum(hits.values()), len(hits)), "n_questions": len(hits),
                       "n_passes": len(decisions), "vanilla_accuracy": ratio(sum(vanilla), len(vanilla)),
                       "n_vanilla": len(vanilla), "categories": _by(hits, firsts, "category"),
                       "l2_categories": _by(hits, firsts, "l2_category")}


# ---- reader ----------------------------------------------------------------------------------------------

def _missing(value) -> bool:
    """LLaVA's is_none: None, NaN, or the text "nan" / "none" (pandas' reading of an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and value.lower() in ("", "nan", "none"))


def _tsv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError("a folder: pass the TSV file in it" if path.is_dir() else "no such file",
                        reason="missing_file", file=str(path))
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a base64 image is longer than csv's 128 KiB default; restored below
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable TSV ({exc})", reason="bad_tsv", file=str(path)) from exc
    finally:
        csv.field_size_limit(limit)


def _index(row: dict, position: int, file: str) -> int:
    value = row.get("index")
    try:
        return int(float(value))  # pandas may have written 241 as 241.0
    except (TypeError, ValueError):
        raise DataError(f"no integer 'index' (got {value!r})", reason="missing_field", file=file,
                        record_id=f"#{position}", field="index") from None


def _question(row: dict, index: int, file: str) -> dict:
    """One published row: its options stop at the first missing letter, as LLaVA's get_options does."""
    rid = str(index)
    if _missing(row.get("question")):
        raise DataError("no 'question'", reason="missing_field", file=file, record_id=rid, field="question")
    options = []
    for letter in LETTERS:
        if _missing(row.get(letter)):
            break
        options.append(str(row[letter]))
    if len(options) < 2:
        raise DataError(f"{len(options)} options (columns A, B, ...); MMBench has 2-4", reason="missing_field",
                        file=file, record_id=rid, field="A" if not options else "B")
    answer = None if _missing(row.get("answer")) else str(row["answer"]).strip()
    if answer is not None and answer not in LETTERS[:len(options)]:
        raise DataError(f"answer {answer!r} is not one of its options {LETTERS[:len(options)]}",
                        reason="bad_field", file=file, record_id=rid, field="answer")
    l2 = next((row[key] for key in row if isinstance(key, str) and key.lower() == "l2-category"), None)
    return {"index": index, "question": str(row["question"]), "options": options, "answer": answer,
            "hint": None if _missing(row.get("hint")) else str(row["hint"]),
            "category": None if _missing(row.get("category")) else str(row["category"]),
            "l2_category": None if _missing(l2) else str(l2)}


def _image(cell, index: int, cells: dict[int, object], file: str, decoded: dict[int, bytes]) -> tables.ImageRef:
    """A TSV cell holds base64, or (64 characters or fewer) the index of the row whose image it shares; each
    image is decoded once (`decoded`), so the passes that share it share one bytes object."""
    if _missing(cell):
        return None
    if not isinstance(cell, str):
        return tables.image_ref(cell, row_id=str(index))
    source = index
    if len(cell) <= IMAGE_REFERENCE_MAX:
        source = _index({"index": cell}, index, file) if cell.strip().lstrip("-").isdigit() else None
        target = cells.get(source)
        if not isinstance(target, str) or len(target) <= IMAGE_REFERENCE_MAX:
            raise DataError(f"image names row {cell!r}, which holds no image", reason="bad_image", file=file,
                            record_id=str(index), field="image")
        cell = target
    if source not in decoded:
        try:
            decoded[source] = tables.decode_base64_image(cell, row_id=str(index))
        except DataError as exc:  # the same error, with the file named
            raise DataError(f"not base64 image data ({exc.__cause__})", reason=exc.reason, file=file,
                            record_id=str(index), field="image") from exc
    return decoded[source]


def _prompt(hint: str | None, question: str, options: list[str]) -> str:
    """model_vqa_mmbench.py's layout: hint, question, then one "X. option" line per option."""
    text = question if hint is None else f"{hint}\n{question}"
    return text + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, options))


def _pass(question: dict, rotation: int, options: list[str], answer: str | None, image, group: int) -> dict:
    return {"question_id": str(question["index"]), "index": str(group), "rotation": rotation,
            "question": _prompt(question["hint"], question["question"], options),
            "options": dict(zip(LETTERS, options)), "answer": answer, "image": image,
            "category": question["category"], "l2_category": question["l2_category"]}


def _rotations(question: dict, image) -> list[dict]:
    """The k passes of a question published once: pass r shows options r, r+1, ... under A, B, ..."""
    options, k, index = question["options"], len(question["options"]), question["index"]
    passes = []
    for r in range(k):
        answer = None if question["answer"] is None else LETTERS[(LETTERS.index(question["answer"]) - r) % k]
        record = _pass(question, r, options[r:] + options[:r], answer, image, index)
        record["question_id"] = str(index + r * PASS_OFFSET)
        passes.append(record)
    return passes


def _group_of(row: dict, index: int, file: str) -> int:
    if "g_index" in row and not _missing(row["g_index"]):  # VLMEvalKit's own column, where present
        return _index({"index": row["g_index"]}, index, file)
    return index % PASS_OFFSET


def _records(rows: list[dict], file: str) -> list[dict]:
    indices = [_index(row, position, file) for position, row in enumerate(rows)]
    questions = [_question(row, index, file) for row, index in zip(rows, indices)]
    cells = {index: row.get("image") for row, index in zip(rows, indices)}
    published = any(index >= PASS_OFFSET for index in indices) or any("g_index" in row for row in rows)
    records, decoded = [], {}
    for row, index, question in zip(rows, indices, questions):
        image = _image(row.get("image"), index, cells, file, decoded)
        if not published:
            records.extend(_rotations(question, image))
            continue
        group = _group_of(row, index, file)
        if group not in cells:
            raise DataError(f"a rotated pass of question {group}, which the file does not hold",
                            reason="missing_pass", file=file, record_id=str(index), field="index")
        rotation = (index - group) // PASS_OFFSET
        records.append(_pass(question, rotation, question["options"], question["answer"], image, group))
    return records


def read_mmbench(path: str | Path, image_root: str | Path | None = None, split: str | None = None) -> list[dict]:
    """MMBench's passes, one record each. `path`: the official TSV (`mmbench_dev_20230712.tsv`,
    `MMBench_DEV_EN.tsv`: index, question, hint, A-D, answer, category, l2-category, image as base64) or
    lmms-lab/MMBench (en) as the `datasets` library saves it (`split`: dev, test). Files that already hold the
    rotated passes keep them as published; others are expanded (see the module's docstring). Each record:
    `question_id` (the pass's index), `index` (pass 0's, shared by all passes), `rotation`, `question` (hint,
    question and options as LLaVA-1.5 asks them), `options`, `answer` (None in a test split), `image` (bytes),
    `category`, `l2_category`."""
    path = Path(path)
    rows = tables.read_rows(path, split) if tables.is_table(path) else _tsv_rows(path)
    return unique_question_ids(_records(rows, str(path)), path, field="index", name_id=True)
