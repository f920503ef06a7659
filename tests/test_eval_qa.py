"""QA scoring and benchmark metrics against hand-computed values; batched generation = one-by-one."""

import pytest
import torch

from vlalign.eval.qa import (accuracy_by_type, benchmark_metrics, is_correct, mme_metrics, normalize,
                             parse_choice, parse_yes_no, pope_metrics)


def test_answer_parsing():
    assert parse_yes_no("Yes, there is.") == "yes"
    assert parse_yes_no("No.") == "no"
    assert parse_yes_no("There is not a star") == "no"
    assert parse_yes_no("A red circle") == "other"
    assert parse_choice("B", ["circle", "star"]) == "B"
    assert parse_choice("(C) star", ["a", "b", "star"]) == "C"
    assert parse_choice("A. circle", ["circle", "star"]) == "A"
    assert parse_choice("star", ["circle", "star"]) == "B"
    assert parse_choice("I think so", ["circle", "star"]) == "?"
    assert normalize("Three.") == normalize("3") == "3"
    assert is_correct({"benchmark": "gqa", "answer": "red"}, "Red.")
    assert not is_correct({"benchmark": "gqa", "answer": "red"}, "The star is red.")


def test_pope_metrics_by_negative_split():
    records = [{"answer": a, "negative": s} for a, s in
               [("yes", "random"), ("no", "random"), ("yes", "random"), ("no", "random"),
                ("yes", "adversarial"), ("no", "adversarial")]]
    predictions = ["yes", "yes", "no", "no", "yes", "yes"]
    metrics = pope_metrics(records, predictions)
    random_split = metrics["random"]
    # random: TP=1, FP=1, FN=1, TN=1
    assert random_split["accuracy"] == 0.5 and random_split["precision"] == 0.5 and random_split["recall"] == 0.5
    assert random_split["f1"] == pytest.approx(0.5) and random_split["yes_ratio"] == 0.5
    adversarial = metrics["adversarial"]  # TP=1, FP=1
    assert adversarial["precision"] == 0.5 and adversarial["recall"] == 1.0
    assert adversarial["f1"] == pytest.approx(2 / 3) and adversarial["yes_ratio"] == 1.0


def test_mme_acc_plus_needs_both_questions_of_a_pair():
    records = [{"benchmark": "mme", "answer": a, "pair": p} for a, p in
               [("yes", "img1"), ("no", "img1"), ("yes", "img2"), ("no", "img2")]]
    metrics = mme_metrics(records, ["yes", "no", "yes", "yes"])
    assert metrics["acc"] == 0.75 and metrics["acc_plus"] == 0.5 and metrics["n_pairs"] == 2


def test_accuracy_by_type_and_multiple_choice():
    records = [{"benchmark": "sqa", "type": "mc", "answer": "B", "choices": ["x", "y"]},
               {"benchmark": "sqa", "type": "mc", "answer": "A", "choices": ["x", "y"]},
               {"benchmark": "gqa", "type": "color", "answer": "red"}]
    table = accuracy_by_type(records, ["B", "B", "red"])
    assert table["mc"] == {"accuracy": 0.5, "n": 2} and table["color"] == {"accuracy": 1.0, "n": 1}
    assert table["all"]["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no records"):
        benchmark_metrics("gqa", [], [])


def test_batched_left_padded_answers_equal_single_answers(tiny_config, toy_data):
    from vlalign.data.build import image_transform_for
    from vlalign.data.images import load_image
    from vlalign.eval.answering import answer_batch
    from vlalign.models.vlm import VisionLanguageModel

    config = tiny_config(2)
    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model).eval()
    transform = image_transform_for(model)
    image = transform(load_image(toy_data["image_root"] / "images" / "00002.png"))
    questions = ["What color is the circle?", "How many shapes are there in this picture today?", "Name a fruit."]
    images = [image, image, None]
    batched = answer_batch(model, config, questions, images, max_new_tokens=6)
    single = [answer_batch(model, config, [q], [i], max_new_tokens=6)[0] for q, i in zip(questions, images)]
    assert batched == single
