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
