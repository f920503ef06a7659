"""The shapes world: determinism, geometry, patch labels, and that every caption, answer and test record
states only what the ground truth says (checked by re-parsing the text against the scenes)."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlalign.data.llava_json import load_records
from vlalign.data.shapes import COLORS, SHAPES, generate_world, is_cached, patch_labels, render, scene_from_json
from vlalign.data.shapes.cli import add_arguments, main_data_shapes
from vlalign.data.shapes.language import HELD_OUT_CAPTION_TEMPLATES, NUMBER_WORDS, PLURAL_SHAPES, template_fragments
from vlalign.data.shapes.questions import SUFFIXES
from vlalign.data.shapes.render import grid_edges
from vlalign.data.shapes.world import Background, Scene, WorldObject, sample_scene

N_TRAIN, N_TEST, SIZE = 24, 12, 96
COLOR = "|".join(COLORS)
SHAPE = "|".join(SHAPES)
PHRASE = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "world"
    generate_world(out, N_TRAIN, N_TEST, seed=3, image_size=SIZE)
    return out


def scenes(world: Path, split: str) -> dict[str, dict]:
    lines = (world / f"scenes_{split}.jsonl").read_text().splitlines()
    return {row["image"]: row for row in map(json.loads, lines)}


def all_scenes(world: Path) -> dict[str, Scene]:
    return {image: scene_from_json(row) for split in ("train", "test", "compositional")
            for image, row in scenes(world, split).items()}


def load(world: Path, name: str) -> list[dict]:
    return json.loads((world / name).read_text())


def holds(a: WorldObject, b: WorldObject, relation: str) -> bool:
    """Written independently of language.py: each centre lies outside the other's extent on that axis."""
    (ax, ay), (bx, by) = a.center, b.center
    if relation == "left":
        return ax < b.bbox[0] and bx >= a.bbox[2]
    if relation == "above":
        return ay < b.bbox[1] and by >= a.bbox[3]
    return holds(b, a, {"right": "left", "below": "above"}[relation])


def true_relations(a: WorldObject, b: WorldObject) -> list[str]:
    return [r for r in ("left", "right", "above", "below") if holds(a, b, r)]


def find(scene: Scene, color: str, shape: str) -> WorldObject:
    obj = scene.find(color, shape)
    assert obj is not None, f"{color} {shape} not in the scene"
    return obj


def strip_suffix(question: str) -> str:
    for suffix in sorted(SUFFIXES.values(), key=len, reverse=True):
        question = question.removesuffix(suffix)
    return question.split("\n")[0]


def yes_no_truth(scene: Scene, question: str) -> bool:
    """The true answer to every yes/no question form the world asks."""
    q = strip_suffix(question)
    if m := re.fullmatch(rf"Is there an? ({COLOR}) ({SHAPE}) in the image\?", q):
        return scene.find(*m.groups()) is not None
    if m := re.fullmatch(r"(?:Are there exactly (\w+) shapes|Is there exactly (one) shape) in the image\?", q):
        return NUMBER_WORDS.index(m.group(1) or m.group(2)) == len(scene.objects)
    if m := re.fullmatch(rf"Is the ({SHAPE}) ({COLOR})\?", q):
        [obj] = [o for o in scene.objects if o.shape == m.group(1)]
        return obj.color == m.group(2)
    if m := re.fullmatch(rf"Is the ({COLOR}) ({SHAPE}) (to the left of|to the right of|above|below) "
                         rf"the ({COLOR}) ({SHAPE})\?", q):
        a, b = find(scene, m.group(1), m.group(2)), find(scene, m.group(4), m.group(5))
        rel = PHRASE[m.group(3)]
        opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}[rel]
        assert holds(a, b, rel) or holds(a, b, opposite), f"ambiguous relation asked: {q}"
        return holds(a, b, rel)
    raise AssertionError(f"unknown yes/no question {q!r}")


def short_truth(scene: Scene, question: str) -> str:
    """The true short answer to every short-answer / multiple-choice question form the world asks."""
    q = strip_suffix(question)
    if m := re.fullmatch(rf"What color is the ({SHAPE})\?", q):
        [obj] = [o for o in scene.objects if o.shape == m.group(1)]
        return obj.color
    if m := re.fullmatch(rf"(?:What shape is the ({COLOR}) object|Which shape is ({COLOR}))\?", q):
        [obj] = [o for o in scene.objects if o.color == (m.group(1) or m.group(2))]
        return obj.shape
    if q == "How many shapes are there?":
        return str(len(scene.objects))
    if m := re.fullmatch(rf"How many ({COLOR}) shapes are there\?", q):
        return str(scene.count(color=m.group(1)))
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        shape = {plural: shape for shape, plural in PLURAL_SHAPES.items()}[m.group(1)]
        return str(scene.count(shape=shape))
    if m := re.fullmatch(rf"Is the ({COLOR}) ({SHAPE}) (?:small or large|large or small)\?", q):
        return find(scene, *m.groups()).size
    if m := re.fullmatch(rf"Is the ({COLOR}) ({SHAPE}) (?:to the left or to the right of|to the right or to the "
                         rf"left of|above or below|below or above) the ({COLOR}) ({SHAPE})\?", q):
        a, b = find(scene, m.group(1), m.group(2)), find(scene, m.group(3), m.group(4))
        axis = {"left", "right"} if "left" in q else {"above", "below"}
        [rel] = [r for r in true_relations(a, b) if r in axis]
        return rel
    if m := re.fullmatch(rf"Where is the ({COLOR}) ({SHAPE}) relative to the ({COLOR}) ({SHAPE})\?", q):
        a, b = find(scene, m.group(1), m.group(2)), find(scene, m.group(3), m.group(4))
        found = true_relations(a, b)
        if len(found) == 2:  # diagonal: only a clearly dominant axis gives a single answer
            dx, dy = abs(a.center[0] - b.center[0]), abs(a.center[1] - b.center[1])
            found = [found[0]] if dx >= 2 * dy else [found[1]] if dy >= 2 * dx else []
        [relation] = found
        return relation
    if re.fullmatch(rf"Is there an? ({COLOR}) ({SHAPE}) in the image\?", q):
        return "yes" if yes_no_truth(scene, q) else "no"
    raise AssertionError(f"unknown short-answer question {q!r}")


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    generate_world(again, N_TRAIN, N_TEST, seed=3, image_size=SIZE)
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".png" and f.parts[0] == "images"]) == N_TRAIN + N_TEST + 20
    for name in files:
        assert (world / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    generate_world(other, N_TRAIN, N_TEST, seed=4, image_size=SIZE)
    assert (other / "stage1.json").read_bytes() != (world / "stage1.json").read_bytes()
    assert any((other / f).read_bytes() != (world / f).read_bytes() for f in files if f.suffix == ".png")


def test_objects_inside_image_and_apart_and_id_map_matches(world):
    for image, scene in all_scenes(world).items():
        assert 1 <= len(scene.objects) <= 6
        assert len(set(scene.combos())) == len(scene.objects)  # "the red circle" always names one object
        for i, a in enumerate(scene.objects):
            x0, y0, x1, y1 = a.bbox
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            for b in scene.objects[i + 1:]:
                assert a.bbox[2] <= b.bbox[0] or b.bbox[2] <= a.bbox[0] or a.bbox[3] <= b.bbox[1] \
                    or b.bbox[3] <= a.bbox[1], (image, a, b)
    row = next(iter(scenes(world, "test").values()))
    image, id_map = render(scene_from_json(row))
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(world / row["image"])))
    for obj in row["objects"]:
        ys, xs = np.nonzero(id_map == obj["index"])
        x0, y0, x1, y1 = obj["bbox"]
        assert len(xs) == obj["area"] > 0 and xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
    for grid in (7, 14):
        assert row["patch_labels"][str(grid)] == patch_labels(id_map, grid)


@pytest.mark.parametrize("grid", [7, 14])
def test_patch_labels_of_one_large_square(grid):
    box = (10, 14, 80, 84)
    scene = Scene(SIZE, Background("plain", (230, 230, 230), (230, 230, 230), "none", 0),
                  (WorldObject("square", "red", "large", box, COLORS["red"]),))
    _, id_map = render(scene)
    labels = np.array(patch_labels(id_map, grid))
    assert labels.shape == (grid, grid)
    edges = grid_edges(SIZE, grid)
    inside = outside = 0
    for row in range(grid):
        for col in range(grid):
            x0, x1, y0, y1 = edges[col], edges[col + 1], edges[row], edges[row + 1]
            if box[0] <= x0 and x1 <= box[2] and box[1] <= y0 and y1 <= box[3]:
                assert labels[row, col] == 0
                inside += 1
            elif x0 >= box[2] or x1 <= box[0] or y0 >= box[3] or y1 <= box[1]:
                assert labels[row, col] == -1
                outside += 1
    assert inside >= 4 and outside >= 2


def test_patch_labels_need_a_quarter_of_the_cell():
    id_map = np.full((8, 8), -1, dtype=np.int16)
    id_map[0:2, 0:2] = 0  # exactly 25% of the top-left 4x4 cell
    id_map[4:5, 4:7] = 1  # 3 of 16 pixels: too little
    id_map[0:4, 5:8] = 1  # 12 of 16 in the top-right cell
    assert patch_labels(id_map, 2) == [[0, 1], [-1, -1]]


def test_sample_scene_is_bounded_and_honours_combos():
    rng = random.Random(0)
    forbidden = [("red", "circle"), ("blue", "star")]
    for _ in range(50):  # cramped: 6 objects wanted in a small image never loops forever
        scene = sample_scene(rng, 40, min_objects=1, max_objects=6, forbidden_combos=forbidden)
        assert not set(scene.combos()) & set(forbidden)
    scene = sample_scene(rng, 96, forbidden_combos=forbidden, required_combos=[("red", "circle")])
    assert ("red", "circle") in scene.combos() and ("blue", "star") not in scene.combos()


def check_caption(scene: Scene, text: str) -> None:
    """Every object named exists (with the stated size), lists name every object, counts and relations hold."""
    named = re.findall(rf"\b(?:an?|the|The) (?:(small|large) )?({COLOR}) ({SHAPE})\b", text)
    for size, color, shape in named:
        obj = find(scene, color, shape)
        assert not size or obj.size == size, text
    if m := re.search(r"(?:There (?:is|are) |^)(\w+) (?:shapes?|objects?)\b", text):
        if m.group(1).lower() in NUMBER_WORDS:
            assert NUMBER_WORDS.index(m.group(1).lower()) == len(scene.objects), text
    listed = re.findall(rf"\b(?:an?|An?) (?:(?:small|large) )?({COLOR}) ({SHAPE})\b", text)
    assert sorted(listed) == sorted(scene.combos()), text
    for c1, s1, phrase, c2, s2 in re.findall(rf"The ({COLOR}) ({SHAPE}) is (to the left of|to the right of|above|"
                                             rf"below) the ({COLOR}) ({SHAPE})\.", text):
        assert holds(find(scene, c1, s1), find(scene, c2, s2), PHRASE[phrase]), text
    if "left to right" in text:
        xs = [find(scene, c, s).center[0] for c, s in listed]
        assert xs == sorted(xs), text


def test_captions_state_only_true_facts(world):
    truth = all_scenes(world)
    for name in ("stage1.json", "test/captions.json", "test/captions_heldout_templates.json",
                 "test/compositional_captions.json"):
        for record in load(world, name):
            check_caption(truth[record["image"]], record["conversations"][1]["value"])


def test_held_out_templates_never_in_training(world):
    training_text = " ".join(turn["value"] for name in ("stage1.json", "stage2.json")
                             for record in load(world, name) for turn in record["conversations"])
    for template in HELD_OUT_CAPTION_TEMPLATES:
        fragments = [f for f in template_fragments(template) if len(f) >= 8]
        assert fragments, template
        for fragment in fragments:
            assert fragment not in training_text, (template, fragment)
    heldout = " ".join(r["conversations"][1]["value"] for r in load(world, "test/compositional_captions.json"))
    assert any(template_fragments(t)[0] in heldout for t in HELD_OUT_CAPTION_TEMPLATES)


def test_forbidden_combos_only_in_compositional_split(world):
    manifest = load(world, "manifest.json")
    forbidden = {tuple(combo) for combo in manifest["forbidden_combos"]}
    assert 4 <= len(forbidden) <= 6
    for split in ("train", "test"):
        for row in scenes(world, split).values():
            assert not forbidden & set(scene_from_json(row).combos())
    for row in scenes(world, "compositional").values():
        assert forbidden & set(scene_from_json(row).combos())
    training_text = " ".join(turn["value"] for name in ("stage1.json", "stage2.json")
                             for record in load(world, name) for turn in record["conversations"])
    for color, shape in forbidden:
        assert not re.search(rf"\b{color} {shape}\b|Is the {shape} {color}\?", training_text), (color, shape)
    comp = load(world, "test/compositional_gqa.json")
    assert any(r["novel"] for r in comp) and all(r["benchmark"] == "gqa" for r in comp)


def test_pope_splits_balanced_and_true(world):
    truth = all_scenes(world)
    records = load(world, "test/pope.json")
    assert len(records) == 6 * N_TEST
    for split in ("random", "popular", "adversarial"):
        answers = [r["answer"] for r in records if r["negative"] == split]
        assert answers.count("yes") == answers.count("no") == N_TEST
    for r in records:
        assert set(r) == {"id", "image", "question", "answer", "benchmark", "type", "negative"}
        assert r["benchmark"] == "pope" and r["type"] == "exist" and "<image>" not in r["question"]
        assert r["question"].endswith(SUFFIXES["yes_no"])
        assert yes_no_truth(truth[r["image"]], r["question"]) == (r["answer"] == "yes"), r


def test_pope_negatives_follow_their_split(world):
    """popular 'no' pairs are among the most frequent training pairs; adversarial ones share a colour or a
    shape with an object in the image."""
    counts: dict[tuple, int] = {}
    for row in scenes(world, "train").values():
        for obj in row["objects"]:
            counts[(obj["color"], obj["shape"])] = counts.get((obj["color"], obj["shape"]), 0) + 1
    ranking = sorted(((c, s) for c in COLORS for s in SHAPES), key=lambda combo: (-counts.get(combo, 0), combo))
    truth = all_scenes(world)
    for r in load(world, "test/pope.json"):
        if r["answer"] != "no":
            continue
        combo = re.match(rf"Is there an? ({COLOR}) ({SHAPE})", r["question"]).groups()
        scene = truth[r["image"]]
        if r["negative"] == "popular":
            assert ranking.index(combo) < 3 + len(scene.objects), (combo, r["id"])
        if r["negative"] == "adversarial":
            assert any(combo[0] == o.color or combo[1] == o.shape for o in scene.objects), (combo, r["id"])


def test_mme_pairs_one_yes_one_no_and_true(world):
    truth = all_scenes(world)
    pairs: dict[str, list[str]] = {}
    for r in load(world, "test/mme.json"):
        assert r["benchmark"] == "mme" and r["question"].endswith(SUFFIXES["yes_no_mme"])
        assert yes_no_truth(truth[r["image"]], r["question"]) == (r["answer"] == "yes"), r
        pairs.setdefault(r["pair"], []).append(r["answer"])
    assert N_TEST <= len(pairs) <= 2 * N_TEST
    assert all(sorted(answers) == ["no", "yes"] for answers in pairs.values())


def test_sqa_letters_point_at_the_true_choice(world):
    truth = all_scenes(world)
    records = load(world, "test/sqa.json")
    assert len(records) == N_TEST
    for r in records:
        letters = "ABCDEFGH"[:len(r["choices"])]
        assert len(set(r["choices"])) == len(r["choices"]) >= 2 and r["answer"] in letters
        for letter, choice in zip(letters, r["choices"]):
            assert f"\n{letter}. {choice}\n" in r["question"]
        assert r["question"].endswith(SUFFIXES["multiple_choice"])
        assert r["choices"][letters.index(r["answer"])] == short_truth(truth[r["image"]], r["question"]), r


def test_gqa_answers_true(world):
    truth = all_scenes(world)
    for name in ("test/gqa.json", "test/compositional_gqa.json"):
        for r in load(world, name):
            assert r["question"].endswith(SUFFIXES["short"]) and r["benchmark"] == "gqa"
            assert r["answer"] == short_truth(truth[r["image"]], r["question"]), r
            if r["type"] == "count":
                assert r["answer"].isdigit()


def test_stage2_answers_true_and_yes_no_balanced(world):
    truth = all_scenes(world)
    yes = no = text_only = 0
    for record in load(world, "stage2.json"):
        turns = record["conversations"]
        if "image" not in record:
            text_only += 1
            continue
        assert 4 <= len(turns) <= 8
        scene = truth[record["image"]]
        for human, gpt in zip(turns[::2], turns[1::2]):
            question, answer = human["value"].replace("<image>", "").strip(), gpt["value"]
            # yes/no questions share LLaVA-1.5's short-answer instruction (as POPE is asked); MME's has its own
            if question.endswith(SUFFIXES["yes_no_mme"]) or (question.endswith(SUFFIXES["yes_no"])
                                                             and answer in ("yes", "no")):
                assert (answer == "yes") == yes_no_truth(scene, question), (question, answer)
            elif question.endswith(SUFFIXES["short"]):
                assert answer == short_truth(scene, question), (question, answer)
            elif question.endswith(SUFFIXES["multiple_choice"]):
                choices = re.findall(r"\n[A-H]\. (.+)", question)
                assert choices["ABCDEFGH".index(answer)] == short_truth(scene, question)
            yes += answer.startswith(("yes", "Yes"))
            no += answer.startswith(("no", "No.", "No,"))
    assert text_only >= 4 and abs(yes - no) <= 1


def test_llava_sets_load(world):
    for name in ("stage1.json", "stage2.json", "test/captions.json", "test/captions_heldout_templates.json",
                 "test/compositional_captions.json"):
        records = load_records(world / name, image_root=world)
        assert records and all(r.image is None or r.image.is_file() for r in records)
    counts = load(world, "manifest.json")["counts"]
    assert counts["stage1.json"] == N_TRAIN and counts["images/compositional"] == 20


def test_is_cached(world, tmp_path):
    assert is_cached(world, N_TRAIN, N_TEST, 3, SIZE)
    assert not is_cached(world, N_TRAIN + 1, N_TEST, 3, SIZE)
    assert not is_cached(world, N_TRAIN, N_TEST, 4, SIZE)
    assert not is_cached(world, N_TRAIN, N_TEST, 3, 224)
    assert not is_cached(world, N_TRAIN, N_TEST, 3, SIZE, grids=(7,))
    assert not is_cached(tmp_path / "nothing", N_TRAIN, N_TEST, 3, SIZE)


def test_cli_generates_then_reuses(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "w"), "--n-train", "4", "--n-test", "2", "--image-size",
                              "64", "--grids", "7"])
    manifest = main_data_shapes(args)
    assert manifest["params"]["grids"] == [7] and "stage1.json" in capsys.readouterr().out
    assert is_cached(tmp_path / "w", 4, 2, 0, 64, grids=(7,))
    (tmp_path / "w" / "images" / "train" / "000003.png").unlink()
    assert not is_cached(tmp_path / "w", 4, 2, 0, 64, grids=(7,))
    assert main_data_shapes(args) is not None  # an incomplete world is regenerated


def test_official_format_files_read_back_to_the_worlds_questions(world):
    """test/official/ holds the same questions in POPE's, MME's, ScienceQA's and GQA's own formats: read with
    the benchmarks' own readers they give the world's questions, answers and images."""
    from vlalign.data.shapes.questions import SUFFIXES
    from vlalign.eval.benchmarks.catalog import benchmark_named

    official = world / "test" / "official"
    pope = benchmark_named("pope").read(official / "pope", world, None)
    own = {r["id"]: r for r in load(world, "test/pope.json")}
    assert len(pope) == len(own)
    for record in pope:
        split, world_id = record["question_id"].split("/", 1)  # POPE ids restart per file: split-prefixed
        truth = own[world_id]
        assert (split, record["label"], record["image"]) == (truth["negative"], truth["answer"], truth["image"])
        assert record["question"] + SUFFIXES["yes_no"] == truth["question"]
    mme = benchmark_named("mme").read(official / "mme", world, None)
    own_mme = load(world, "test/mme.json")
    assert len(mme) == len(own_mme) and sorted(r["answer"] for r in mme) == sorted(r["answer"] for r in own_mme)
    assert {r["category"] for r in mme} <= {"existence", "count", "color", "position"}
    for record in mme:  # the copied image is the world's image, byte for byte
        source = world / "images" / "test" / Path(record["image"]).name.split("-", 1)[1]
        assert Path(record["image"]).read_bytes() == source.read_bytes()
    sqa = {r["question_id"]: r for r in benchmark_named("scienceqa").read(official / "scienceqa", world, None)}
    for truth in load(world, "test/sqa.json"):
        record = sqa[truth["id"]]
        assert "ABCDEFGH"[record["answer"]] == truth["answer"] and record["choices"] == truth["choices"]
        assert record["question"] + SUFFIXES["multiple_choice"] == truth["question"]
    for name in ("gqa", "compositional_gqa"):
        records = benchmark_named("gqa").read(official / name / "testdev_balanced_questions.json", world, None)
        own_gqa = {r["id"]: r for r in load(world, f"test/{name}.json")}
        assert [r["question_id"] for r in records] == list(own_gqa)
        for record in records:
            truth = own_gqa[record["question_id"]]
            assert record["answer"] == truth["answer"] and (world / record["image"]).is_file()
            assert record["types"]["detailed"] == truth["type"]
