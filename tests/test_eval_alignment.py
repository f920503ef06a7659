"""`vlalign eval alignment` end to end on a tiny checkpoint and a tiny shapes world with ground truth."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.config import dump_config
from vlalign.eval.alignment_run import CellTruth, Collected, Pair, probe_accuracy


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlalign.data.shapes import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=4, n_test=12, seed=0, image_size=32, grids=(4,))  # tiny CLIP: 4x4 tokens
    return out


@pytest.fixture
def checkpoint(tiny_config, tmp_path):
    path = tmp_path / "c.yaml"
    config = tiny_config(1, "train.max_steps=1")
    dump_config(config, path)
    assert main(["train", str(path)]) == 0
    return config.train.output_dir


def test_eval_alignment_writes_numbers_pictures_and_markdown(checkpoint, world, tmp_path, capsys):
    out = tmp_path / "alignment"
    data = world / "test" / "captions.json"
    assert main(["eval", "alignment", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--batch-size", "5", "--examples", "1"]) == 0
    assert "modality gap" in capsys.readouterr().out
    result = json.loads((out / "alignment.json").read_text())
    n = len(json.loads(data.read_text()))
    assert result["pairs"] == n == 12
    eos = result["eos"]
    assert 0.0 <= eos["modality_gap"] <= 2.0
    for direction in ("i2t", "t2i"):  # Recall@K can only grow with K; K=10 of 12 pairs is >= 10/12 by ties
        assert 0.0 <= eos[f"{direction}@1"] <= eos[f"{direction}@5"] <= eos[f"{direction}@10"] <= 1.0
    token = result["token"]
    assert 0.0 <= token["gap_score_D"] <= 2.0 and -1.0 <= token["tacs"] <= 1.0
    assert sum(token["recalled_words"].values()) <= n * 16
    probe = token["probe"]  # the world has a 4x4 label grid, matching the tiny tower's tokens
    assert probe["cells"] == n * 16 and 0 < probe["object_cells"] < probe["cells"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and probe["color_chance"] == pytest.approx(1 / 8)
    assert result["settings"]["ground_truth"] and result["settings"]["words"] == "shapes world"
    assert set(result["pictures"]) == {"tsne.png", "recalled_0.png", "heatmap_0.png"}
    for name in result["pictures"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    markdown = (out / "alignment.md").read_text()
    assert f"{eos['modality_gap']:.3f}" in markdown and "![tsne.png](tsne.png)" in markdown
    assert f"{100 * probe['accuracy']:.1f}" in markdown


def test_eval_alignment_names_a_text_only_record(checkpoint, world, tmp_path, capsys):
    records = json.loads((world / "test" / "captions.json").read_text())[:3]
    del records[1]["image"]
    records[1]["conversations"][0]["value"] = records[1]["conversations"][0]["value"].replace("<image>\n", "")
    data = world / "test" / "broken.json"
    data.write_text(json.dumps(records))
    assert main(["eval", "alignment", "--checkpoint", str(checkpoint), "--data", str(data),
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert records[1]["id"] in err and "image" in err


def test_probe_counts_a_cell_right_when_the_word_names_what_covers_it():
    words = ["red", "blue", "circle", "star", "small", "large", "background"]
    groups = {"color": [0, 1], "shape": [2, 3]}
    truth = CellTruth(accepted=[[{"red", "circle", "small"}, {"background"}]],
                      objects=[[("red", "circle"), None]])
    collected = Collected()
    # token 0 (red circle cell) recalls "circle": right; token 1 (background) recalls "blue": wrong
    collected.recalled = [torch.tensor([2, 1])]
    collected.group_choice = {"color": [torch.tensor([1, 0])], "shape": [torch.tensor([0, 1])]}
    result = probe_accuracy(collected, [Pair("p", "img.png", "a red circle")], {"img.png": truth}, words, groups, 2)
    assert result["cells"] == 2 and result["object_cells"] == 1
    assert result["accuracy"] == 0.5 and result["object_accuracy"] == 1.0 and result["background_accuracy"] == 0.0
    assert result["color_accuracy"] == 0.0  # among colour words the object cell chose "blue"
    assert result["shape_accuracy"] == 1.0 and result["shape_chance"] == 0.5


def test_probe_recalls_the_word_planted_as_a_visual_token(checkpoint, world):
    from vlalign.eval.alignment_run import collect, read_pairs, word_embedding_table
    from vlalign.generate import load_checkpoint_model

    model, config = load_checkpoint_model(checkpoint)
    words = ["red", "blue", "circle", "star", "background"]
    table = word_embedding_table(model, words)
    planted = {0: 3, 5: 0, 15: 1}  # visual token position -> index of the word it is set to

    def plant(module, inputs, output):
        output = output.clone()
        for position, word in planted.items():
            output[:, position] = 2.5 * table[word]  # any positive scale: the probe is cosine-based
        return output

    handle = model.multi_modal_projector.register_forward_hook(plant)
    try:
        pairs, root = read_pairs(world / "test" / "captions.json", None, 3)
        collected = collect(model, config, pairs, root, words, {"color": [0, 1], "shape": [2, 3]}, batch_size=2)
    finally:
        handle.remove()
    for recalled in collected.recalled:
        for position, word in planted.items():
            assert int(recalled[position]) == word
