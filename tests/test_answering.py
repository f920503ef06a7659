"""Batched, left-padded greedy answers equal one-by-one answers (what every benchmark run rests on)."""

import torch


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
