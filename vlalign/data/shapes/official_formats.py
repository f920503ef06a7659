"""The world's held-out sets written again in the benchmarks' own file formats, so that `vlalign eval
benchmarks` (and the demo) read them with the same readers and score them with the same scorers as the
real POPE, MME, ScienceQA and GQA.

Under `test/official/` (ids are the world records' ids, so results join back to their question types):
  pope/coco_pope_{random,popular,adversarial}.json   POPE: JSON lines {question_id, image, text, label};
                                                     images relative to the world root (COCO's file names
                                                     relative to val2014 in the real set)
  mme/<category>/<image>.png + <image>.txt            MME: each .txt line `question<TAB>Yes|No`, the image
                                                     beside it; categories existence, count, color, position
  scienceqa/problems.json + pid_splits.json           ScienceQA: problems by pid, split "test", images at
            + images/test/<pid>/image.png             images/<split>/<pid>/image.png
  gqa/testdev_balanced_questions.json                 GQA: {qid: {imageId, question, answer, fullAnswer,
  compositional_gqa/testdev_balanced_questions.json     types}}; imageId = the image path under images/
                                                        without its extension; types.detailed = the world's
                                                        question kind (color, shape, count, ...)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlalign.data.shapes.questions import LETTERS, SUFFIXES

MME_CATEGORY = {"exist": "existence", "count": "count", "color": "color", "relation": "position"}
OFFICIAL = "test/official"


def bare_question(record: dict, suffix: str) -> str:
    """The question without the answer-format suffix the world's prompt ends in (the evaluation adds
    LLaVA-1.5's own instruction)."""
    text = record["question"]
    if not text.endswith(SUFFIXES[suffix]):
        raise ValueError(f"world record {record['id']}: question does not end in the {suffix!r} suffix")
    return text[:-len(SUFFIXES[suffix])]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_pope(root: Path, records: list[dict]) -> int:
    for split in ("random", "popular", "adversarial"):
        rows = [{"question_id": r["id"], "image": r["image"], "text": bare_question(r, "yes_no"),
                 "label": r["answer"]} for r in records if r["negative"] == split]
        _write(root / OFFICIAL / "pope" / f"coco_pope_{split}.json", "".join(json.dumps(row) + "\n" for row in rows))
    return len(records)


def write_mme(root: Path, records: list[dict]) -> int:
    """MME keeps its own " Please answer yes or no." on the question line, so the world's MME suffix stays."""
    lines: dict[Path, list[str]] = {}
    for r in records:
        folder = root / OFFICIAL / "mme" / MME_CATEGORY[r["type"]]
        image = folder / f"{Path(r['image']).parent.name}-{Path(r['image']).name}"
        if not image.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / r["image"], image)
        lines.setdefault(image.with_suffix(".txt"), []).append(f"{r['question']}\t{r['answer'].capitalize()}")
    for path, rows in lines.items():
        _write(path, "\n".join(rows) + "\n")
    return len(records)


def write_science_qa(root: Path, records: list[dict]) -> int:
    folder = root / OFFICIAL / "scienceqa"
    problems = {}
    for r in records:
        question = bare_question(r, "multiple_choice").split(f"\n{LETTERS[0]}. ")[0]
        problems[r["id"]] = {"question": question, "choices": r["choices"], "answer": LETTERS.index(r["answer"]),
                             "hint": "", "image": "image.png", "task": "closed choice", "grade": "grade1",
                             "subject": "shapes world", "topic": r["type"], "category": r["type"], "skill": r["type"],
                             "lecture": "", "solution": "", "split": "test"}
        image = folder / "images" / "test" / r["id"] / "image.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / r["image"], image)
    _write(folder / "problems.json", json.dumps(problems, indent=1))
    _write(folder / "pid_splits.json", json.dumps({"test": list(problems)}))
    return len(records)


def write_gqa(root: Path, records: list[dict], name: str) -> int:
    """Every world short-answer question asks for a value (GQA's structural type "query"), except the
    compositional set's existence questions (yes/no: "verify")."""
    questions = {r["id"]: {"imageId": str(Path(r["image"]).relative_to("images").with_suffix("")),
                           "question": bare_question(r, "short"), "answer": r["answer"], "fullAnswer": r["answer"],
                           "isBalanced": True,
                           "types": {"structural": "verify" if r["answer"] in ("yes", "no") else "query",
                                     "semantic": r["type"], "detailed": r["type"]}} for r in records}
    _write(root / OFFICIAL / name / "testdev_balanced_questions.json", json.dumps(questions, indent=1))
    return len(records)


def write_official_formats(root: Path, files: dict[str, list[dict]]) -> dict[str, int]:
    """Questions written per official set (for the manifest's counts)."""
    return {f"{OFFICIAL}/pope": write_pope(root, files["test/pope.json"]),
            f"{OFFICIAL}/mme": write_mme(root, files["test/mme.json"]),
            f"{OFFICIAL}/scienceqa": write_science_qa(root, files["test/sqa.json"]),
            f"{OFFICIAL}/gqa": write_gqa(root, files["test/gqa.json"], "gqa"),
            f"{OFFICIAL}/compositional_gqa": write_gqa(root, files["test/compositional_gqa.json"],
                                                       "compositional_gqa")}
