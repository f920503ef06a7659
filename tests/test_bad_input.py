"""Bad input: each problem is one clear error naming record / file / field; `skip` counts by reason."""

import json
import shutil
import re

import pytest
from PIL import Image

from vlalign.cli import main
from vlalign.config import load_config
from vlalign.data.dataset import LlavaDataset, Skipped
from vlalign.data.images import ImageTransform
from vlalign.data.llava_json import SkipReport, load_records
from vlalign.errors import ConfigError, DataError, ModelSourceError
from vlalign.models.llm import load_tokenizer
from vlalign.models.vlm import VisionLanguageModel
from vlalign.objectives import build_objectives
from vlalign.train.loop import train


def pair(question="<image>\nDescribe the image briefly.", answer="There is a red circle on the left."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def good(record_id, image="good.png"):
    return {"id": record_id, "image": image, "conversations": pair()}


@pytest.fixture
def images(tmp_path):
    """good.png (a real image), garbage.png (random bytes), truncated.png (a PNG cut in half)."""
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"\x13\x37not an image at all" * 20)
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])
    return tmp_path


def write_json(path, records):
    path.write_text(json.dumps(records, indent=1))
    return path


def load_one_bad(tmp_path, bad, on_error="raise"):
    """A file [good, bad] loaded under `on_error`; returns (records, skips) or raises."""
    path = write_json(tmp_path / "data.json", [good("ok-0"), bad])
    skips = SkipReport()
    return load_records(path, tmp_path, on_error, skips), skips


# --- records ------------------------------------------------------------------------------------------------


def test_missing_image_names_record_and_field(images):
    with pytest.raises(DataError) as info:
        load_one_bad(images, good("rec-missing", "nowhere/lost.png"))
    error = info.value
    assert error.reason == "missing_image" and error.record_id == "rec-missing" and error.field == "image"
    assert "rec-missing" in str(error) and "'image'" in str(error) and "lost.png" in str(error)
    assert "data.json" in str(error)


@pytest.mark.parametrize("name", ["garbage.png", "truncated.png"])
def test_unreadable_image_fails_at_item_load_naming_the_record(images, tiny_models, name):
    path = write_json(images / "data.json", [good("ok-0"), good("rec-corrupt", name)])
    records = load_records(path, images)  # the file exists: up-front validation passes
    assert [r.id for r in records] == ["ok-0", "rec-corrupt"]
    tok = load_tokenizer(tiny_models["llm"], "<image>")
    kwargs = dict(fmt="plain", image_token_id=tok.convert_tokens_to_ids("<image>"), num_visual_tokens=4,
                  max_length=64)
    transform = ImageTransform(32, (0.5,) * 3, (0.5,) * 3)
    dataset = LlavaDataset(records, tok, transform, **kwargs)
    assert dataset[0].pixel_values.shape == (3, 32, 32)
    with pytest.raises(DataError) as info:
        dataset[1]
    error = info.value
    assert error.reason == "unreadable_image" and error.record_id == "rec-corrupt" and error.field == "image"
    assert "rec-corrupt" in str(error) and name in str(error)

    skipping = LlavaDataset(records, tok, transform, on_error="skip", **kwargs)
    item = skipping[1]
    assert isinstance(item, Skipped) and item.error.reason == "unreadable_image"


def test_oversized_image_is_an_unreadable_image_not_a_crash(images, tiny_models, monkeypatch):
    # PIL refuses images above MAX_IMAGE_PIXELS (decompression bombs) with an exception outside OSError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # good.png has 1200 pixels
    path = write_json(images / "data.json", [good("rec-huge")])
    tok = load_tokenizer(tiny_models["llm"], "<image>")
    kwargs = dict(fmt="plain", image_token_id=tok.convert_tokens_to_ids("<image>"), num_visual_tokens=4,
                  max_length=64)
    dataset = LlavaDataset(load_records(path, images), tok, ImageTransform(32, (0.5,) * 3, (0.5,) * 3), **kwargs)
    with pytest.raises(DataError) as info:
        dataset[0]
    assert info.value.reason == "unreadable_image" and info.value.record_id == "rec-huge"
    dataset.on_error = "skip"
    assert isinstance(dataset[0], Skipped)


def test_data_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"id": "caf\xe9", "conversations": []}]'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.json.*UTF-8") as info:
        load_records(path, tmp_path, "skip", SkipReport())
    assert info.value.reason == "corrupt_json"


def test_corrupt_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b" "conversations": []}\n]\n')
    for on_error in ("raise", "skip"):  # a file that cannot be parsed at all is never skipped
        with pytest.raises(DataError) as info:
            load_records(path, tmp_path, on_error, SkipReport())
        assert info.value.reason == "corrupt_json"
        message = str(info.value)
        assert "broken.json" in message
        assert re.search(r"line 3 column 14\b", message), message


def test_json_that_is_not_an_array_of_records(images):
    tmp_path = images
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"id": "a", "conversations": pair()}))
    with pytest.raises(DataError, match="object.json.*JSON array") as info:
        load_records(path, tmp_path)
    assert info.value.reason == "corrupt_json"
    path = write_json(tmp_path / "scalars.json", [good("ok-0"), 7])
    with pytest.raises(DataError, match="#1.*not a JSON object"):
        load_records(path, tmp_path)


def test_jsonl_corrupt_line_raises_or_is_counted(images):
    path = images / "data.jsonl"
    lines = [json.dumps(good("ok-1")), '{"id": "half", "conversations": [', "", json.dumps(good("ok-2"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_records(path, images)
    assert info.value.reason == "corrupt_json"
    assert "data.jsonl" in str(info.value) and "line 2" in str(info.value)

    skips = SkipReport()
    records = load_records(path, images, "skip", skips)
    assert [r.id for r in records] == ["ok-1", "ok-2"]
    assert skips.counts == {"corrupt_json": 1}
    assert "line 2" in skips.examples["corrupt_json"][0]


def test_missing_data_file_and_nothing_usable(images):
    with pytest.raises(DataError, match="nope.json") as info:
        load_records(images / "nope.json", images)
    assert info.value.reason == "missing_file"
    path = write_json(images / "all_bad.json", [good("bad-1", "lost.png"), {"id": "bad-2"}])
    skips = SkipReport()
    with pytest.raises(DataError, match=r"all_bad.json.*no usable records \(all 2 were skipped: skipped 2 records "
                                        r"\(missing_image: 1, no_conversations: 1\)\)") as info:
        load_records(path, images, "skip", skips)
    assert info.value.reason == "empty"
    assert skips.counts == {"missing_image": 1, "no_conversations": 1}
    with pytest.raises(DataError, match=r"no usable records \(the file holds none\)"):
        load_records(write_json(images / "empty.json", []), images, "skip")


def test_duplicate_record_ids_are_errors_or_counted_skips(images):
    path = write_json(images / "dups.json", [good("a"), good("b"), good("a", "lost.png"), good("a")])
    with pytest.raises(DataError, match=r"record 'a \(#2\)', field 'id': the id is used again \(first at record #0\)"):
        load_records(path, images)
    skips = SkipReport()
    assert [r.id for r in load_records(path, images, "skip", skips)] == ["a", "b"]
    assert skips.counts == {"duplicate_id": 2}  # two records, not one: each occurrence is named by position


def test_an_empty_answer_is_an_error_or_a_counted_skip(images):
    path = write_json(images / "empty_answer.json", [good("a"), {"id": "b", "image": "good.png",
                                                                 "conversations": pair(answer="  ")}])
    with pytest.raises(DataError, match=r"record 'b', field 'conversations\[1\]': the gpt answer is empty"):
        load_records(path, images)
    skips = SkipReport()
    assert [r.id for r in load_records(path, images, "skip", skips)] == ["a"]
    assert skips.counts == {"empty_answer": 1}


@pytest.mark.parametrize("bad, reason, field", [
    ({"id": "r", "image": "good.png"}, "no_conversations", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": []}, "no_conversations", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": pair()[:1]}, "no_conversations", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": "hello"}, "no_conversations", "conversations"),
    # Wrong number of <image> tags for the record.
    ({"id": "r", "image": "good.png", "conversations": pair("<image>\n<image>\nCompare.")},
     "image_tag_count", "conversations"),
    ({"id": "r", "conversations": pair("<image>\nDescribe.")}, "image_tag_count", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": pair("Describe.")}, "image_tag_count", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": pair("Describe.", "Here: <image>")},
     "image_tag_count", "conversations"),
    ({"id": "r", "image": "good.png", "conversations": pair("<image>\nDescribe.", "It is <image>")},
     "image_tag_count", "conversations"),
    # Turns that do not alternate human, gpt, ... or are malformed.
    ({"id": "r", "conversations": [pair()[1], pair()[0]]}, "bad_turn", "conversations[0]"),
    ({"id": "r", "conversations": [*pair("Hi."), *pair("Hi.")[1:]]}, "bad_turn", "conversations[2]"),
    ({"id": "r", "conversations": [{"from": "system", "value": "x"}, *pair("Hi.")]}, "bad_turn", "conversations[0]"),
    ({"id": "r", "conversations": [{"from": "human"}, pair("Hi.")[1]]}, "bad_turn", "conversations[0]"),
    ({"id": "r", "conversations": [{"from": "human", "value": 3}, pair("Hi.")[1]]}, "bad_turn", "conversations[0]"),
    ({"id": "r", "conversations": [{"from": ["human"], "value": "Hi."}, pair("Hi.")[1]]},
     "bad_turn", "conversations[0]"),
    ({"id": "r", "conversations": ["human: hi", pair("Hi.")[1]]}, "bad_turn", "conversations[0]"),
    ({"id": "r", "image": ["good.png"], "conversations": pair()}, "missing_image", "image"),
], ids=["no-key", "empty", "no-gpt-turn", "not-a-list", "two-tags", "tag-without-image", "image-without-tag",
        "tag-only-in-gpt", "tag-also-in-gpt", "gpt-first", "two-gpt", "system-role", "no-value",
        "value-not-text", "role-not-text", "turn-not-object", "image-not-a-path"])
def test_bad_record_names_id_reason_and_field(images, bad, reason, field):
    with pytest.raises(DataError) as info:
        load_one_bad(images, bad)
    error = info.value
    assert (error.reason, error.record_id, error.field) == (reason, "r", field)
    assert "record 'r'" in str(error) and f"field '{field}'" in str(error) and "data.json" in str(error)

    records, skips = load_one_bad(images, bad, on_error="skip")
    assert [r.id for r in records] == ["ok-0"]
    assert skips.counts == {reason: 1}


def test_record_without_id_is_named_by_position(images):
    with pytest.raises(DataError) as info:
        load_one_bad(images, {"image": "good.png", "conversations": pair()})
    assert info.value.record_id == "#1" and info.value.field == "id"  # index in the JSON array
    assert "'#1'" in str(info.value) and "no id" in str(info.value)
    with pytest.raises(DataError, match="'#1'"):
        load_one_bad(images, {"id": "", "image": "good.png", "conversations": pair()})

    path = images / "data.jsonl"  # JSONL: the line number
    path.write_text(json.dumps(good("ok-1")) + "\n\n" + json.dumps({"conversations": pair()}) + "\n")
    with pytest.raises(DataError) as info:
        load_records(path, images)
    assert info.value.record_id == "#3" and "data.jsonl" in str(info.value)


def test_numeric_ids_are_accepted_as_text(images):
    records, _ = load_one_bad(images, good(1234))
    assert records[1].id == "1234"


# --- config -------------------------------------------------------------------------------------------------


def test_unknown_override_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr_rate=1"])
    message = str(info.value)
    assert "train.lr_rate" in message
    valid = re.search(r"one of: (.*)$", message).group(1).split(", ")
    assert {"lr", "batch_size", "max_steps", "warmup_ratio"} <= set(valid)
    assert "lr_rate" not in valid
    with pytest.raises(ConfigError, match="'rank'.*alpha.*dropout.*r, target_modules"):
        load_config(None, ["train.tune.lora.rank=4"])
    with pytest.raises(ConfigError, match="'trian'.*data, model, objectives, train"):
        load_config(None, ["trian.lr=1"])


def test_set_values_are_read_against_the_field_type():
    # YAML 1.1 reads no/yes/on/off as booleans; a text field keeps the text as written
    config = load_config(None, ["train.mixed_precision=no", "data.system_prompt=yes", "data.chat_template=null",
                                "train.lr=2e-3", "model.connector_options={pool: 2}"])
    assert config.train.mixed_precision == "no" and config.data.system_prompt == "yes"
    assert config.data.chat_template is None and config.train.lr == 0.002
    assert config.model.connector_options == {"pool": 2}
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(None, ["train.mixed_precision=off"])  # text now, and not one of no|bf16|fp16


def test_set_value_that_is_not_yaml_is_named():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.connector_options={pool: 2"])
    message = str(info.value)
    assert message == ("override 'model.connector_options={pool: 2': the value is not valid YAML "
                       "(expected ',' or '}', but got '<stream end>' at line 1 column 9)")


def test_connector_options_and_connector_kind_are_checked_before_weights_load():
    from vlalign.train.checks import check_config

    with pytest.raises(ConfigError, match="connector 'mlp2x_gelu': model.connector_options.pool: .*integer >= 1, got True"):
        check_config(load_config(None, ["model.connector_options={pool: true}"]))
    with pytest.raises(ConfigError, match="connector 'linear': model.connector_options.norm: Input should be a valid boolean"):
        check_config(load_config(None, ["model.connector=linear", "model.connector_options={norm: 'yes'}"]))
    with pytest.raises(ConfigError, match="objective 'sea' needs a patch connector; model.connector 'qformer' is a "
                                          "query connector"):
        check_config(load_config(None, ["model.connector=qformer", "objectives={sea: {labels: somewhere}}"]))


def test_nested_patches_replace_dict_fields_and_name_unknown_keys():
    config = load_config("configs/quickstart-stage1.yaml",
                         patches=[{"objectives": {"xformer": {}}, "model": {"connector_options": {"num_queries": 4}},
                                   "train": {"lr": 3e-4}}])
    assert config.objectives == {"xformer": {}}  # replaced whole, not merged into the preset's generative
    assert config.model.connector_options == {"num_queries": 4} and config.model.connector == "mlp2x_gelu"
    assert config.train.lr == 3e-4 and config.train.batch_size == 8  # sections merge key by key
    with pytest.raises(ConfigError, match="'train.lrr'.*batch_size"):
        load_config(None, patches=[{"train": {"lrr": 1}}])


def test_unknown_yaml_key_lists_the_valid_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\n  lr_rate: 1\ndata:\n  format: chat\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "run.yaml" in message and "train.lr_rate" in message
    assert "lr," in message and "batch_size" in message and "grad_accum" in message
    path.write_text("model:\n  connectr: linear\n")
    with pytest.raises(ConfigError, match="model.connectr.*connector") as info:
        load_config(path)


def test_bad_config_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="data.on_error.*'raise' or 'skip'"):
        load_config(None, ["data.on_error=ignore"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="missing.yaml.*does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(tmp_path / "list.yaml")
    assert load_config(None, ["train.lr=2e-5"]).train.lr == pytest.approx(2e-5)  # the happy path parses


@pytest.mark.parametrize("setting, says", [
    ("train.lr=nan", "finite number"), ("train.lr=.inf", "finite number"), ("train.lr=1e30", "less than or equal to 1"),
    ("train.lr=-1e-3", "greater than 0"), ("train.lr=0", "greater than 0"), ("train.vision_lr=-1", "greater than 0"),
    ("train.batch_size=0", "greater than or equal to 1"), ("train.grad_accum=0", "greater than or equal to 1"),
    ("train.epochs=0", "greater than or equal to 1"), ("train.max_steps=-3", "greater than or equal to 1"),
    ("train.warmup_ratio=1.5", "less than or equal to 1"), ("train.max_grad_norm=0", "greater than 0"),
    ("train.weight_decay=-0.1", "greater than or equal to 0"), ("train.seed=-1", "greater than or equal to 0"),
    ("train.log_every=0", "greater than or equal to 1"), ("train.save_every=0", "greater than or equal to 1"),
    ("train.tune.lora.r=0", "greater than or equal to 1"), ("train.tune.lora.dropout=1", "less than 1"),
    ("train.eval.batch_size=0", "greater than or equal to 1"), ("model.max_length=0", "greater than or equal to 1"),
    ("data.num_workers=-2", "greater than or equal to 0"),
])
def test_config_values_out_of_range_are_refused_before_anything_loads(setting, says):
    """Values that would train nothing, divide by zero or end in NaN weights: one error naming the key."""
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}': .*{says}"):
        load_config(None, [setting])


def test_unknown_objective_and_options_list_the_registered():
    config = load_config(None, ["objectives.contrastivez.weight=1"])
    with pytest.raises(ConfigError, match="unknown objective 'contrastivez'.*generative"):
        build_objectives(config.objectives, model=None)
    config = load_config(None, ["objectives.generative.wieght=1"])
    with pytest.raises(ConfigError, match="objectives.generative.*wieght.*valid keys: weight"):
        build_objectives(config.objectives, model=None)
    with pytest.raises(ConfigError, match="no objectives"):
        build_objectives({}, model=None)


def test_unknown_connector_lists_the_registered(tiny_config):
    config = tiny_config(1, "model.connector=qformerz")
    with pytest.raises(ConfigError, match="qformerz.*avgpool, linear, mlp2x_gelu"):
        VisionLanguageModel.from_config(config.model)
    config = tiny_config(1, "model.connector=avgpool", "model.connector_options.size=3")
    with pytest.raises(ConfigError, match="avgpool.*connector_options"):
        VisionLanguageModel.from_config(config.model)


# --- model sources ------------------------------------------------------------------------------------------

OFFLINE_HINT = "Give a local path, or a packaged model"


def test_unreachable_llm_explains_local_path_or_packaged_alias(tiny_models):
    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", "model.llm=no-such-org/no-such-model"])
    with pytest.raises(ModelSourceError) as info:
        VisionLanguageModel.from_config(config.model)
    message = str(info.value)
    assert "no-such-org/no-such-model" in message and OFFLINE_HINT in message
    for alias in ("smollm2-135m", "efficientnet-lite0"):
        assert alias in message


def test_unreachable_vision_tower_explains_too(tiny_models):
    config = load_config(None, ["model.vision_tower=no-such-org/no-such-tower", f"model.llm={tiny_models['llm']}"])
    with pytest.raises(ModelSourceError) as info:
        VisionLanguageModel.from_config(config.model)
    message = str(info.value)
    assert "vision tower 'no-such-org/no-such-tower'" in message and OFFLINE_HINT in message
    assert "efficientnet-lite0" in message and "smollm2-135m" in message


def test_existing_folder_that_is_not_a_model(tmp_path, tiny_models):
    (tmp_path / "empty").mkdir()
    config = load_config(None, [f"model.vision_tower={tmp_path / 'empty'}", f"model.llm={tiny_models['llm']}"])
    with pytest.raises(ModelSourceError, match="folder exists but could not be loaded"):
        VisionLanguageModel.from_config(config.model)


def test_missing_gguf_and_timm_weights(tmp_path, tiny_models):
    gguf = tmp_path / "models" / "tiny.Q4_0.gguf"
    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", f"model.llm={gguf}"])
    with pytest.raises(ModelSourceError, match=re.escape(str(gguf)) + ".*GGUF file does not exist"):
        VisionLanguageModel.from_config(config.model)

    weights = tmp_path / "resnet18.safetensors"
    config = load_config(None, [f"model.vision_tower=timm:resnet18@{weights}", f"model.llm={tiny_models['llm']}"])
    with pytest.raises(ModelSourceError, match=re.escape(str(weights)) + " does not exist"):
        VisionLanguageModel.from_config(config.model)
    config = load_config(None, ["model.vision_tower='timm:'", f"model.llm={tiny_models['llm']}"])
    with pytest.raises(ModelSourceError, match=r"timm:<model name>"):
        VisionLanguageModel.from_config(config.model)


def test_source_of_the_wrong_kind(tiny_models):
    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", "model.llm=efficientnet-lite0"])
    with pytest.raises(ModelSourceError, match="efficientnet-lite0.*not a causal language model"):
        VisionLanguageModel.from_config(config.model)


# --- CLI ------------------------------------------------------------------------------------------------------


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("vlalign: error:")]


def test_cli_unknown_key_is_one_error_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\n")
    assert main(["info", str(path), "--set", "train.lr_rate=1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and len(_error_lines(captured.err)) == 1
    assert "train.lr_rate" in captured.err and "batch_size" in captured.err

    path.write_text("train:\n  lr_rate: 1\n")
    assert main(["train", str(path)]) == 2
    captured = capsys.readouterr()
    assert len(_error_lines(captured.err)) == 1 and "train.lr_rate" in captured.err
    assert "Traceback" not in captured.err


def test_cli_reports_data_and_objective_errors(tiny_config, tmp_path, capsys):
    from vlalign.config import dump_config

    path = tmp_path / "run.yaml"
    dump_config(tiny_config(1), path)
    assert main(["info", str(path), "--set", "objectives.contrastivez.weight=1"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "Traceback" not in err
    assert "unknown objective 'contrastivez'" in err and "generative" in err
    assert main(["train", str(path), "--set", f"data.train_file={tmp_path / 'nope.json'}"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "nope.json" in err and "does not exist" in err


# --- the skip policy end to end -------------------------------------------------------------------------------

EXPECTED_SKIPS = {"missing_image": 2, "unreadable_image": 2, "image_tag_count": 2, "no_conversations": 1}


@pytest.fixture
def dirty_stage1(images):
    records = [
        good("cap-0"), good("cap-1"),
        good("bad-missing-1", "lost/one.png"),  # the first bad record in file order
        good("cap-2"),
        good("bad-corrupt-1", "garbage.png"),
        {"id": "bad-tags-1", "image": "good.png", "conversations": pair("<image>\n<image>\nDescribe.")},
        good("cap-3"),
        {"id": "bad-noconv-1", "image": "good.png"},
        good("bad-missing-2", "lost/two.png"),
        good("cap-4"),
        {"id": "bad-tags-2", "conversations": pair("<image>\nDescribe.")},
        good("bad-corrupt-2", "truncated.png"),
        good("cap-5"),
    ]
    return write_json(images / "dirty.json", records)


def test_skip_policy_counts_each_reason_and_reports_at_the_end(tiny_config, dirty_stage1, capsys):
    # 6 good + 2 corrupt images reach the dataset: 2 batches of 4, both seen within max_steps=2.
    config = tiny_config(1, f"data.train_file={dirty_stage1}", f"data.image_root={dirty_stage1.parent}",
                         "data.on_error=skip", "train.max_steps=2")
    final = train(config)
    assert final.is_dir()
    report = json.loads((final.parent / "data_report.json").read_text())
    assert report["skipped"] == EXPECTED_SKIPS
    examples = report["skip_examples"]
    assert any("bad-corrupt-1" in e for e in examples["unreadable_image"])
    assert any("bad-corrupt-2" in e for e in examples["unreadable_image"])
    assert any("bad-missing-2" in e for e in examples["missing_image"])
    assert any("bad-noconv-1" in e for e in examples["no_conversations"])
    metrics = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # the good records did train

    out = capsys.readouterr().out
    assert "skipped 7 records" in out
    for reason, count in EXPECTED_SKIPS.items():
        assert f"{reason}: {count}" in out


def test_raise_policy_stops_at_the_first_bad_record(tiny_config, dirty_stage1):
    config = tiny_config(1, f"data.train_file={dirty_stage1}", f"data.image_root={dirty_stage1.parent}",
                         "data.on_error=raise", "train.max_steps=2")
    with pytest.raises(DataError) as info:
        train(config)
    assert info.value.record_id == "bad-missing-1" and info.value.reason == "missing_image"
    assert "dirty.json" in str(info.value) and "bad-missing-1" in str(info.value)


def test_raise_policy_surfaces_a_corrupt_image_during_training(tiny_config, images):
    records = [good("cap-0"), good("cap-1"), good("bad-corrupt", "garbage.png"), good("cap-2")]
    path = write_json(images / "corrupt_only.json", records)
    config = tiny_config(1, f"data.train_file={path}", f"data.image_root={images}", "train.max_steps=1")
    with pytest.raises(DataError) as info:
        train(config)
    assert info.value.reason == "unreadable_image" and info.value.record_id == "bad-corrupt"
    assert "garbage.png" in str(info.value)


def test_skips_count_records_once_across_epochs_and_resume(tiny_config, dirty_stage1, tmp_path):
    # 8 usable-looking records, batch 4: 2 batches per epoch; 3 epochs meet each corrupt image 3 times.
    settings = (f"data.train_file={dirty_stage1}", f"data.image_root={dirty_stage1.parent}", "data.on_error=skip",
                "train.epochs=3", "train.save_every=2")
    straight = train(tiny_config(1, *settings, f"train.output_dir={tmp_path / 'a'}"))
    assert json.loads((straight.parent / "data_report.json").read_text())["skipped"] == EXPECTED_SKIPS

    # Resume from step 2 (after one epoch): load-time skips must not be counted a second time.
    resumed_dir = tmp_path / "b"
    train(tiny_config(1, *settings, f"train.output_dir={resumed_dir}"))
    for folder in resumed_dir.glob("checkpoint-*"):
        if folder.name != "checkpoint-000002":
            shutil.rmtree(folder)
    shutil.rmtree(resumed_dir / "final")
    final = train(tiny_config(1, *settings, f"train.output_dir={resumed_dir}"), resume=True)
    assert json.loads((final.parent / "data_report.json").read_text())["skipped"] == EXPECTED_SKIPS


def test_an_epoch_of_only_skipped_records_is_an_error_not_a_hang(tiny_config, images):
    records = [good("bad-a", "garbage.png"), good("bad-b", "truncated.png")]
    path = write_json(images / "all_bad.json", records)
    config = tiny_config(1, f"data.train_file={path}", f"data.image_root={images}", "data.on_error=skip",
                         "train.max_steps=2")
    with pytest.raises(DataError, match="every record was skipped"):
        train(config)


def test_truncated_images_fail_even_when_a_library_allows_them_process_wide(tmp_path):
    """lmms-eval sets PIL's LOAD_TRUNCATED_IMAGES = True when imported; vlalign's loader still refuses."""
    import io

    from PIL import Image, ImageFile

    from vlalign.data.image_files import decode_image_bytes, load_image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:-40])
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(OSError, match="cannot read image"):
            load_image(tmp_path / "cut.png")
        with pytest.raises(OSError, match="cannot decode embedded image"):
            decode_image_bytes(buffer.getvalue()[:-40])
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
