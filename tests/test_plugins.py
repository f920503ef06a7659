"""The extension points: a new objective with a new per-sample field is one module plus two registrations.

The objective below lives only in this test module. It needs a value no built-in field provides (each
caption's word count), registers a sample field for it and an objective that reads it from `Batch.extras`,
and trains two steps through the real loop: no other file knows it exists.
"""

from __future__ import annotations

import json

import pytest
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vlalign.data.samples import SAMPLE_FIELDS, register_sample_field
from vlalign.errors import ConfigError
from vlalign.objectives import OBJECTIVES, Objective, Terms, register_objective
from vlalign.train.checks import check_config
from vlalign.train.loop import train

SEEN: list[tuple[list[str], list[int]]] = []  # (record ids, caption word counts) of every batch the toy saw


@pytest.fixture
def caption_length_objective():
    @register_sample_field("caption_words", collate="tensor")
    def caption_words(ctx) -> int:
        return len(ctx.record.turns[-1].text.split())

    @register_objective("toy_caption_length")
    class CaptionLength(Objective):
        """Regress each caption's word count from the mean visual token (a head of its own)."""

        @classmethod
        def sample_fields(cls, options):
            return {"caption_words": {}}

        def __init__(self, options, model):
            super().__init__(options, model)
            self.head = nn.Linear(model.hidden_size, 1)

        def forward(self, output, batch, model) -> Terms:
            counts = batch.extras["caption_words"]
            SEEN.append((list(batch.record_ids), counts.tolist()))
            predicted = self.head(output.visual_tokens.float().mean(dim=1)).squeeze(-1)
            return Terms({self.name: F.mse_loss(predicted, counts.float().to(predicted.device))})

    SEEN.clear()
    yield CaptionLength
    del OBJECTIVES["toy_caption_length"], SAMPLE_FIELDS["caption_words"]


def test_an_objective_with_a_new_sample_field_trains_without_touching_the_package(tiny_config, toy_data,
                                                                                   caption_length_objective):
    config = tiny_config(1, "train.max_steps=2", "train.batch_size=4", "train.log_every=1",
                         "objectives={generative: {weight: 1.0}, toy_caption_length: {weight: 0.5}}")
    final = train(config)
    records = {r["id"]: r for r in json.loads(toy_data["stage1"].read_text())}
    assert len(SEEN) == 2
    for record_ids, counts in SEEN:  # the field reached the objective, per sample, in batch order
        assert counts == [len(records[rid]["conversations"][1]["value"].split()) for rid in record_ids]
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert row["loss"] == pytest.approx(row["generative"] + 0.5 * row["toy_caption_length"], rel=1e-5)
    saved = load_file(str(final / "model.safetensors"))  # its own parameters are checkpointed with the rest
    head = saved["objectives.toy_caption_length.head.weight"]
    assert head.shape == (1, 64)  # the tiny LLM's width


def test_a_field_nobody_provides_is_an_error_before_any_weights_load(tiny_config, caption_length_objective):
    caption_length_objective.sample_fields = classmethod(lambda cls, options: {"caption_letters": {}})
    config = tiny_config(1, "objectives={generative: {}, toy_caption_length: {}}")
    with pytest.raises(ConfigError, match=r"no sample layout provides the field\(s\) \['caption_letters'\]"):
        check_config(config)


def test_two_objectives_asking_one_field_differently_is_an_error(tiny_config, caption_length_objective):
    caption_length_objective.sample_fields = classmethod(lambda cls, options: {"image_eos_position": {"prompt": True}})
    config = tiny_config(1, "objectives={eos_contrastive: {prompt: false}, toy_caption_length: {}}")
    with pytest.raises(ConfigError, match="'eos_contrastive' and 'toy_caption_length' need the sample field "
                                          "'image_eos_position' laid out differently"):
        check_config(config)


def test_registries_refuse_a_second_registration(caption_length_objective):
    with pytest.raises(ValueError, match="registered twice"):
        register_sample_field("caption_words")(lambda ctx: 0)
    with pytest.raises(ValueError, match="registered twice"):
        register_objective("toy_caption_length")(caption_length_objective)
