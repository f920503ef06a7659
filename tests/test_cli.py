"""CLI surfaces: info, train + generate through `vlalign.cli.main`, frozen parts kept in eval mode."""

from vlalign.cli import main
from vlalign.config import dump_config
from vlalign.models.vlm import VisionLanguageModel
from vlalign.objectives import build_objectives
from vlalign.train.loop import TrainingModule
from vlalign.train.stages import apply_tune


def test_info_prints_recipe_visual_tokens_and_counts(tiny_config, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    dump_config(tiny_config(2, "train.tune.llm=lora", "train.tune.lora.r=2"), path)
    assert main(["info", str(path), "--set", "model.connector=linear"]) == 0
    out = capsys.readouterr().out
    assert "connector: linear" in out
    assert "visual tokens per image: 16" in out
    assert "'llm': 'lora'" in out
    projector_row = next(line for line in out.splitlines() if line.startswith("multi_modal_projector"))
    assert projector_row.split()[1] == f"{32 * 64 + 64:,}"  # linear 32 -> 64 with bias, all trainable


def test_train_then_generate_from_cli(tiny_config, tmp_path, toy_data, capsys):
    path = tmp_path / "c.yaml"
    dump_config(tiny_config(1, "train.max_steps=1"), path)
    assert main(["train", str(path)]) == 0
    out_dir = tiny_config(1).train.output_dir
    image = toy_data["image_root"] / "images" / "00001.png"
    assert main(["generate", "--checkpoint", out_dir, "--image", str(image), "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "holds no complete vlalign checkpoint" in capsys.readouterr().err


def test_frozen_components_stay_in_eval_mode_while_training(tiny_config):
    config = tiny_config(1)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 1, config.train.tune)
    module = TrainingModule(model, build_objectives(config.objectives, model)).train()
    assert module.training and model.multi_modal_projector.training
    assert not model.vision_tower.training and not model.language_model.training
    assert not any(m.training for m in model.vision_tower.modules())


# --- user errors: one `error:` line, exit code 2, never a traceback -------------------------------------------

def _bad_commands(tmp: "Path") -> list[list[str]]:
    text = tmp / "notes.txt"
    text.write_text("not an image")
    config = tmp / "c.yaml"
    config.write_text("train:\n  lr: 1.0e-3\n")
    return [
        ["train", str(tmp / "missing.yaml")],
        ["train", str(config), "--set", "train.lr=nan"],
        ["train", str(config), "--set", "train.grad_accum=0"],
        ["info", str(config), "--set", "train.batch_size=0"],
        ["generate", "--checkpoint", str(tmp / "nowhere")],
        ["generate", "--checkpoint", str(tmp / "nowhere"), "--max-new-tokens", "0"],
        ["generate", "--checkpoint", str(tmp / "nowhere"), "--top-p", "1.5"],
        ["generate", "--checkpoint", str(tmp / "nowhere"), "--image", str(text)],
        ["eval", "benchmarks", "--checkpoint", str(tmp / "nowhere"), "--benchmark", "pope", "--data",
         str(tmp / "missing.json"), "--out", str(tmp / "out")],
        ["eval", "benchmarks", "--checkpoint", str(tmp / "nowhere"), "--benchmark", "pope", "--data",
         str(tmp / "missing.json"), "--out", str(tmp / "out"), "--batch-size", "0"],
        ["eval", "score", "pope", "--questions", str(tmp / "missing.json"), "--predictions", str(text),
         "--out", str(tmp / "out")],
        ["eval", "alignment", "--checkpoint", str(tmp / "nowhere"), "--data", str(text), "--out", str(tmp / "a")],
        ["export", "--checkpoint", str(tmp / "nowhere"), "--out", str(tmp / "export")],
        ["data", "shapes", "--out", str(tmp / "world"), "--n-train", "0"],
        ["data", "toy", "--out", str(tmp / "toy"), "--n", "-1"],
        ["train-dual-encoder", "--data", str(tmp / "missing.json"), "--out", str(tmp / "de")],
        ["label-patches", "--data", str(tmp / "missing.json"), "--encoder", str(tmp / "nowhere"), "--out",
         str(tmp / "labels")],
        ["pretrain-mae", "--images", str(tmp / "no-images"), "--out", str(tmp / "mae")],
        ["pretrain-mae", "--images", str(tmp), "--out", str(tmp / "mae"), "--batch-size", "0"],
        ["chat", "--checkpoint", str(tmp / "nowhere")],
        ["serve", "--checkpoint", str(tmp / "nowhere"), "--port", "70000"],
        ["demo", "--objectives", "nonsense"],
    ]


def test_every_command_answers_bad_arguments_with_one_error_line(tmp_path):
    import subprocess
    import sys

    failures = []
    for command in _bad_commands(tmp_path):
        done = subprocess.run([sys.executable, "-m", "vlalign", *command], capture_output=True, text=True,
                              timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        if done.returncode != 2 or "Traceback" in done.stderr or len(errors) != 1:
            failures.append(f"{' '.join(command[:2])}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    assert not failures, "\n".join(failures)


def test_generate_checks_image_and_prompt_before_the_model_loads(tmp_path, monkeypatch, capsys, toy_data,
                                                                 tiny_config):
    import vlalign.generate

    path = tmp_path / "c.yaml"
    dump_config(tiny_config(1, "train.max_steps=1"), path)
    assert main(["train", str(path)]) == 0
    checkpoint = tiny_config(1).train.output_dir
    image = toy_data["image_root"] / "images" / "00001.png"
    monkeypatch.setattr(vlalign.generate, "load_checkpoint_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model must not load")))
    (tmp_path / "notes.txt").write_text("not an image")
    capsys.readouterr()
    cases = [(["--image", str(tmp_path / "notes.txt")], "notes.txt: cannot read image"),
             (["--prompt", "<image>\nWhat is it?"], "holds <image> but no image was given"),
             (["--image", str(image), "--prompt", "<image> and <image>?"], "holds <image> 2 times")]
    for extra, says in cases:
        assert main(["generate", "--checkpoint", checkpoint, *extra]) == 2
        assert says in capsys.readouterr().err


def test_a_prompt_may_place_the_image_itself(tiny_models):
    from vlalign.data.templates import prompt_ids
    from vlalign.models.llm import load_tokenizer

    tokenizer = load_tokenizer(tiny_models["llm"], "<image>")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for fmt in ("plain", "chat"):
        default = prompt_ids(tokenizer, fmt, "What is it?", image_id, 3)
        assert default.count(image_id) == 3
        separator = "\n" if fmt == "chat" else ""
        assert prompt_ids(tokenizer, fmt, f"<image>{separator}What is it?", image_id, 3) == default  # LLaVA style
        after = prompt_ids(tokenizer, fmt, "What is it? <image>", image_id, 3)
        assert after.count(image_id) == 3 and after.index(image_id) > default.index(image_id)  # where written


def test_model_sources_of_the_wrong_kind_are_named(tiny_config):
    import pytest

    from vlalign.errors import ModelSourceError
    from vlalign.models.vlm import VisionLanguageModel as Model

    config = tiny_config(1)
    llm, tower = config.model.llm, config.model.vision_tower
    with pytest.raises(ModelSourceError, match="model.llm .* is a 'clip_vision_model' model, not a causal language"):
        Model.from_config(config.model.model_copy(update={"llm": tower}))
    with pytest.raises(ModelSourceError, match="model.vision_tower .* is a 'llama' model with no image input"):
        Model.from_config(config.model.model_copy(update={"vision_tower": llm}))


def test_hub_ids_fail_fast_when_the_hub_is_out_of_reach(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    from vlalign.models import sources
    from vlalign.models.sources import go_offline_if_the_hub_is_unreachable

    monkeypatch.setattr(sources, "_hub_probed", False)  # this process may have probed already
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")  # a name that never resolves
    go_offline_if_the_hub_is_unreachable(str(tmp_path))  # a local folder: no probe, nothing changes
    assert hub.HF_HUB_OFFLINE is False
    go_offline_if_the_hub_is_unreachable("someone/some-model")
    assert hub.HF_HUB_OFFLINE is True  # transformers then fails in seconds instead of retrying for ~50 s
