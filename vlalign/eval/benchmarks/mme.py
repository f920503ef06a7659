"""MME (yes/no pairs, two questions per image): the official scoring (MME's `eval_tool/calculation.py`), and
lmms-eval's.

Per category: acc = questions answered right / questions; acc+ = images whose every question is right /
images; score = 100 x acc + 100 x acc+ (at most 200). Perception = the sum over its 10 categories (at most
2000), cognition over its 4 (at most 800).

Reading an answer, official: lower-case it; "yes" / "no" as is; else "yes" when "yes" is in its first four
characters, else "no" when "no" is, else "other" (always wrong). lmms-eval: also strips spaces and removes
every ".", and reads a one-letter answer "y" / "n" as yes / no.

Reading (`read_mme`), two forms:
- MME's release folder `MME_Benchmark_release_version/` (or the folder holding it), one folder per
  category, in either of its two layouts: `<category>/images/<name>.<ext>` with the answers in
  `<category>/questions_answers_YN/<name>.txt`, or image and `.txt` side by side in `<category>/`. Each .txt
  line is `question<TAB>Yes|No`, two per image. The release ships its images, so `image` is the absolute
  path of `<category>/[images/]<file>` in it (`image_root` is not needed; LLaVA's `--image-folder` is the
  release folder too).
- lmms-lab/MME as the `datasets` library saves it (columns question_id, image, question, answer, category):
  its `question_id` names the image, shared by the image's two questions (lmms-eval groups acc+ by it).
Either way a record's `pair` (what acc+ groups by) is `<category>/<image file>` (lmms-lab: its question_id,
prefixed by the category where it is not already) and its `question_id` is `<pair>#<k>`, k = 0, 1 in file
order; an image without exactly two questions is refused, as MME's calculation.py asserts. The question is
the way LLaVA-1.5 asks it: MME's line with its own "Please answer yes or no." removed (then PROMPT_SUFFIX
follows), which reproduces all 2374 lines of LLaVA's llava_mme.jsonl; lmms-eval's `mme.yaml` does the
same, except that it keeps the space before a doubled "  Please" of five colour questions. LLaVA's
llava_mme.jsonl itself holds no answers and is refused with a pointer to the release folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks.common import (IMAGE_SUFFIXES, Decision, Scoring, check_scoring, prediction_for, ratio,
                                            required_field, yes_or_no)
from vlalign.eval.benchmarks.tables import image_ref, is_table, read_rows

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
RELEASE = "MME_Benchmark_release_version"
MME_INSTRUCTION = "Please answer yes or no."  # on every MME question line; LLaVA-1.5 replaces it
# LLaVA-1.5's evaluation instruction (its llava_mme.jsonl; lmms-eval's mme.yaml post_prompt)
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
# LLaVA-1.5: model_vqa_loader.py's default --max_new_tokens, which scripts/v1_5/eval/mme.sh keeps;
# lmms-eval's mme.yaml generates 16
MAX_NEW_TOKENS = 128
LMMS_EVAL_MAX_NEW_TOKENS = 16


def _prefix_rule(answer: str) -> str:
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def parse_official(text: str) -> str:
    return _prefix_rule(text.lower())


def parse_lmms_eval(text: str) -> str:
    answer = text.lower().strip().replace(".", "")
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    return _prefix_rule(answer)


def pair_of(question: dict) -> str:
    """What acc+ groups a question by: the readers' `pair`, since an embedded image (bytes) has no name and
    two images may share their bytes; a record without one falls back on its image path, then its id."""
    if question.get("pair") is not None:
        return str(question["pair"])
    image = question.get("image")
    return image if isinstance(image, str) else str(question["question_id"])


def category_metrics(decisions: list[Decision], images: list[str]) -> dict[str, float]:
    """`images[i]`: the image of decisions[i]; acc+ needs every question of an image right."""
    by_image: dict[str, list[bool]] = {}
    for decision, image in zip(decisions, images):
        by_image.setdefault(image, []).append(decision.correct)
    acc = ratio(sum(d.correct for d in decisions), len(decisions))
    acc_plus = ratio(sum(all(marks) for marks in by_image.values()), len(by_image))
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus, "questions": len(decisions),
            "images": len(by_image)}


def score_mme(questions: list[dict], predictions: dict[str, str],
              scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with a unique `question_id`, `pair` (what the two questions of an image share;
    without it the `image` path, then the question itself), `answer` yes|no and `category`. Returns the
    decisions in question order and {"categories": {name: acc, acc_plus, score, ...}, "perception": total,
    "cognition": total}."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, groups = [], {}
    for question in questions:
        category, qid = question["category"], str(question["question_id"])
        if category not in PERCEPTION + COGNITION:
            raise ValueError(f"MME question {qid!r}: unknown category {category!r}; MME's are "
                             f"{', '.join(PERCEPTION + COGNITION)}")
        gold = str(question["answer"]).lower().strip()
        text = prediction_for(predictions, qid, "MME")
        parsed = parse(text)
        decision = Decision(qid, text, parsed, gold, parsed == gold)
        decisions.append(decision)
        groups.setdefault(category, ([], []))
        groups[category][0].append(decision)
        groups[category][1].append(pair_of(question))
    categories = {name: category_metrics(*groups[name]) for name in PERCEPTION + COGNITION if name in groups}
    totals = {side: sum(categories[name]["score"] for name in names if name in categories)
              for side, names in (("perception", PERCEPTION), ("cognition", COGNITION))}
    return decisions, {"categories": categories, **totals}


def llava_question(line_question: str) -> str:
    """MME's question as LLaVA-1.5 asks it: without MME's own yes/no instruction (PROMPT_SUFFIX replaces it)."""
    return line_question.replace(MME_INSTRUCTION, "").strip()


def _answer(value, file: Path, record: str) -> str:
    return yes_or_no(value, file, record, "answer", spelled="Yes or No")  # as MME's files write them


def _category(name, file: Path, record: str | None = None) -> str:
    if name not in PERCEPTION + COGNITION:
        raise DataError(f"unknown MME category {name!r}; MME's are {', '.join(PERCEPTION + COGNITION)}",
                        reason="bad_category", file=str(file), record_id=record, field="category")
    return name


def _question_lines(file: Path) -> list[tuple[str, str]]:
    """(question, answer) per line of one image's .txt; LLaVA's convert_answer_to_mme.py strips each line."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", reason="bad_record", file=str(file)) from exc
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise DataError(f"line {number} is not question<TAB>answer", reason="bad_record", file=str(file))
        pairs.append((parts[0], _answer(parts[1], file, f"line {number}")))
    return pairs


def _release_root(path: Path) -> Path:
    if not path.exists():
        raise DataError("no such file or folder", reason="missing_file", file=str(path))
    if path.is_file():
        hint = "LLaVA's llava_mme.jsonl holds no answers; " if path.suffix == ".jsonl" else ""
        raise DataError(f"{hint}give MME's release folder ({RELEASE}/) or an lmms-lab/MME save",
                        reason="bad_format", file=str(path))
    return path / RELEASE if (path / RELEASE).is_dir() else path


def _category_folders(root: Path) -> list[str]:
    """The release's category folders in MME's order; a folder that is no MME category is refused (hidden
    ones and a zip's __MACOSX are skipped)."""
    names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    for name in sorted(names):
        _category(name, root / name)
    if not names:
        raise DataError("no MME category folders here", reason="missing_file", file=str(root))
    return [name for name in PERCEPTION + COGNITION if name in names]


def _category_records(root: Path, category: str) -> list[dict]:
    folder = root / category
    images, answers = (folder / "images", folder / "questions_answers_YN") if (folder / "images").is_dir() \
        else (folder, folder)
    if not answers.is_dir():
        raise DataError("no questions_answers_YN folder beside images/", reason="missing_file", file=str(folder))
    by_name = {p.stem: p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    records = []
    for text_file in sorted(answers.glob("*.txt")):
        if text_file.stem not in by_name:
            raise DataError(f"no image {text_file.stem}.* for it in {images}", reason="missing_image",
                            file=str(text_file))
        image = str(by_name[text_file.stem].absolute())
        pair = f"{category}/{by_name[text_file.stem].name}"
        records += [{"question_id": f"{pair}#{k}", "question": llava_question(question), "image": image,
                     "pair": pair, "answer": answer, "category": category}
                    for k, (question, answer) in enumerate(_question_lines(text_file))]
    return records


def _table_records(path: Path, split: str | None) -> list[dict]:
    records, seen = [], Counter()
    for index, row in enumerate(read_rows(path, split)):
        row_id = f"row {index}"
        category = _category(required_field(row, "category", path, row_id), path, row_id)
        image_name = str(required_field(row, "question_id", path, row_id))
        pair = image_name if image_name.startswith(f"{category}/") else f"{category}/{image_name}"
        image = image_ref(required_field(row, "image", path, pair), row_id=pair)
        records.append({"question_id": f"{pair}#{seen[pair]}",
                        "question": llava_question(str(required_field(row, "question", path, pair))), "image": image,
                        "pair": pair, "answer": _answer(required_field(row, "answer", path, pair), path, pair),
                        "category": category})
        seen[pair] += 1
    return records


def _checked(records: list[dict], where: Path) -> list[dict]:
    """Two questions per image (acc+ means both of them right). The ids, `<pair>#<k>`, are unique by
    construction."""
    for pair, count in Counter(record["pair"] for record in records).items():
        if count != 2:
            raise DataError(f"MME asks two questions per image, this one has {count}", reason="bad_pair",
                            file=str(where), record_id=pair, field="pair")
    return records


def read_mme(path: Path, image_root: Path | None = None, split: str | None = None) -> list[dict]:
    """MME's questions (the two forms in the module docstring; a release category by category in MME's order,
    a save in its rows' order): `question_id`, `question`, `image` (an absolute path or bytes), `pair`,
    `answer` yes|no, `category`. `image_root` is not needed: both forms carry their images."""
    path = Path(path)
    if is_table(path):
        return _checked(_table_records(path, split), path)
    root = _release_root(path)
    if split is not None:
        raise DataError(f"MME's release has no splits (got split {split!r})", reason="bad_split", file=str(root))
    return _checked([record for category in _category_folders(root)
                     for record in _category_records(root, category)], root)
