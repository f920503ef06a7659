"""GQA (testdev-balanced, short answers): the official scoring, and lmms-eval's.

official: LLaVA-1.5's `convert_gqa_for_eval.py` strips trailing periods and lower-cases the answer; GQA's
`eval.py` then counts exact matches with the gold answer. Its binary / open split: a question whose
structural type is "query" is open, every other type (verify, logical, choose, compare) binary. No article
removal or number-word mapping (that is VQAv2's normaliser, more lenient).
lmms-eval (`tasks/gqa/gqa.yaml`): the answer stripped (as lmms-eval does to every generated answer), then
exact match with ignore_case and ignore_punctuation, i.e. both sides lower-cased and every ASCII
punctuation mark removed, nothing else.

Reading (`read_gqa`), two forms:
- GQA's own questions file, e.g. `testdev_balanced_questions.json` ({question id: {imageId, question,
  answer, types, fullAnswer, ...}}): `question_id` is GQA's; `image` is `<imageId>.jpg` relative to
  `image_root` (GQA's images/ folder, LLaVA's --image-folder), or `images/<imageId>.jpg` where the root is
  the folder holding images/; an image kept in another format under the same name is found too.
- lmms-lab/GQA as the `datasets` library saves it, which keeps questions and images apart in two configs:
  `testdev_balanced_instructions` (id, imageId, question, answer, types, ...) and `testdev_balanced_images`
  (id = imageId, image), joined on imageId as lmms-eval's gqa_process_docs does. `path` is the instructions
  save (a save_to_disk folder, a parquet file or a folder of them) with the images save given as
  `image_root` or lying beside it under the same name with "images" for "instructions"; or the folder of a
  hub snapshot holding both config folders. `image` is the embedded bytes.
The question is GQA's as is; LLaVA-1.5 asks it followed by PROMPT_SUFFIX (all 12578 lines of its
llava_gqa_testdev_balanced.jsonl end so; lmms-eval's gqa.yaml post_prompt). That jsonl holds no answers
and is refused with a pointer to GQA's file.
"""

from __future__ import annotations

import string
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks.common import (IMAGE_SUFFIXES, Decision, Scoring, check_scoring, load_json_file,
                                            prediction_for, ratio, required_field, unique_question_ids)
from vlalign.eval.benchmarks.tables import image_ref, is_table, read_rows

PUNCTUATION = str.maketrans("", "", string.punctuation)
INSTRUCTIONS, IMAGES = "testdev_balanced_instructions", "testdev_balanced_images"  # lmms-lab/GQA's configs
# LLaVA-1.5's evaluation instruction (its llava_gqa_testdev_balanced.jsonl; lmms-eval's gqa.yaml post_prompt)
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
# LLaVA-1.5: model_vqa_loader.py's default --max_new_tokens, which scripts/v1_5/eval/gqa.sh keeps;
# lmms-eval's gqa.yaml generates 16
MAX_NEW_TOKENS = 128
LMMS_EVAL_MAX_NEW_TOKENS = 16


def parse_official(text: str) -> str:
    return text.rstrip(".").lower()


def parse_lmms_eval(text: str) -> str:
    # lmms-eval strips every generated answer before a task's metric sees it
    return text.strip().lower().translate(PUNCTUATION)


def score_gqa(questions: list[dict], predictions: dict[str, str],
              scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with `question_id`, `answer` and optionally GQA's `types` ({"structural": ...})."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, kinds = [], []
    for question in questions:
        qid = str(question["question_id"])
        gold = str(question["answer"]) if scoring == "official" else parse_lmms_eval(str(question["answer"]))
        text = prediction_for(predictions, qid, "GQA")
        parsed = parse(text)
        decisions.append(Decision(qid, text, parsed, gold, parsed == gold))
        structural = (question.get("types") or {}).get("structural")
        kinds.append(None if structural is None else "open" if structural == "query" else "binary")
    metrics = {"accuracy": ratio(sum(d.correct for d in decisions), len(decisions)), "n": len(decisions)}
    for kind in ("binary", "open"):
        chosen = [d for d, k in zip(decisions, kinds) if k == kind]
        if chosen:
            metrics[kind] = ratio(sum(d.correct for d in chosen), len(chosen))
    return decisions, metrics


def _load_questions(file: Path) -> dict:
    questions = load_json_file(file, missing_hint="give GQA's questions json or an lmms-lab/GQA save")
    if not isinstance(questions, dict):
        raise DataError("expected GQA's questions file, an object of questions by id", reason="bad_format",
                        file=str(file))
    return questions


def _image_file(image_id: str, image_root: Path | None) -> str:
    """GQA's `<imageId>.jpg`, relative to `image_root`. Under a root that lacks it, its `images/` folder is tried
    too (GQA's download and LLaVA's layout keep the questions file beside images/, and the CLI's default root
    is the questions file's folder), then the same name in another image format (a converted copy)."""
    name = f"{image_id}.jpg"
    if image_root is None:
        return name
    root = Path(image_root)
    for folder in (Path(), Path("images")):
        if (root / folder / name).is_file():
            return str(folder / name)
    for folder in (Path(), Path("images")):
        others = sorted(other for other in (root / folder / name).parent.glob(f"{Path(image_id).name}.*")
                        if other.suffix.lower() in IMAGE_SUFFIXES)
        if others:
            return str(others[0].relative_to(root))
    return name


def _question_record(question_id: str, entry, file: Path, image_root: Path | None) -> dict:
    if not isinstance(entry, dict):
        raise DataError("not a question object", reason="bad_record", file=str(file), record_id=question_id)
    return {"question_id": question_id, "question": str(required_field(entry, "question", file, question_id)),
            "image": _image_file(str(required_field(entry, "imageId", file, question_id)), image_root),
            "answer": str(required_field(entry, "answer", file, question_id)), "types": entry.get("types")}


def _file_records(file: Path, image_root: Path | None) -> list[dict]:
    if file.suffix == ".jsonl":
        raise DataError("LLaVA's llava_gqa_testdev_balanced.jsonl holds no answers; give GQA's "
                        "testdev_balanced_questions.json it was made from", reason="bad_format", file=str(file))
    return [_question_record(str(question_id), entry, file, image_root)
            for question_id, entry in _load_questions(file).items()]


def _images_beside(path: Path) -> Path | None:
    """lmms-lab/GQA's images config is named as its instructions config with "images" for "instructions"."""
    for candidate in (path, path.parent):
        if "instructions" in candidate.name:
            return candidate.with_name(candidate.name.replace("instructions", "images"))
    return None


def _gqa_tables(path: Path, image_root: Path | None) -> tuple[Path, Path]:
    """(instructions, images) saves. An image root that is the instructions save, or the folder around it
    (the CLI's default image root is the data folder), is no images save."""
    instructions = path / INSTRUCTIONS if (path / INSTRUCTIONS).is_dir() else path
    around = {place.resolve() for place in (path, instructions, instructions.parent if instructions.is_file()
                                            else instructions)}
    if image_root is not None and Path(image_root).resolve() not in around and is_table(Path(image_root)):
        return instructions, Path(image_root)
    beside = path / IMAGES if instructions != path else _images_beside(instructions)
    if beside is None or not beside.exists():
        raise DataError(f"lmms-lab/GQA keeps its images in a second config ({IMAGES}); give its save as the "
                        "image root or keep it beside the instructions", reason="missing_file", file=str(path))
    return instructions, beside


def _images_by_id(images: Path, split: str | None) -> dict[str, bytes | str | None]:
    pictures = {}
    for index, row in enumerate(read_rows(images, split)):
        image_id = str(required_field(row, "id", images, f"row {index}"))
        pictures[image_id] = image_ref(required_field(row, "image", images, image_id), row_id=image_id)
    return pictures


def _instruction_record(row: dict, index: int, instructions: Path, pictures: dict, images: Path) -> dict:
    question_id = str(required_field(row, "id", instructions, f"row {index}"))
    image_id = str(required_field(row, "imageId", instructions, question_id))
    if pictures.get(image_id) is None:
        raise DataError(f"image {image_id!r} is not in the images save {images}", reason="missing_image",
                        file=str(instructions), record_id=question_id, field="imageId")
    return {"question_id": question_id, "question": str(required_field(row, "question", instructions, question_id)),
            "image": pictures[image_id], "answer": str(required_field(row, "answer", instructions, question_id)),
            "types": row.get("types")}


def _table_records(path: Path, image_root: Path | None, split: str | None) -> list[dict]:
    instructions, images = _gqa_tables(path, image_root)
    pictures = _images_by_id(images, split)
    return [_instruction_record(row, index, instructions, pictures, images)
            for index, row in enumerate(read_rows(instructions, split))]


def read_gqa(path: Path, image_root: Path | None = None, split: str | None = None) -> list[dict]:
    """GQA's questions (the two forms in the module docstring), in file order: `question_id`, `question`,
    `image` (a path relative to `image_root`, or bytes), `answer`, `types` (GQA's, None where absent)."""
    path = Path(path)
    if (path / INSTRUCTIONS).is_dir() or is_table(path):
        return unique_question_ids(_table_records(path, image_root, split), path)
    if split is not None:
        raise DataError(f"a GQA questions file is one split already (got split {split!r})", reason="bad_split",
                        file=str(path))
    return unique_question_ids(_file_records(path, image_root), path)
