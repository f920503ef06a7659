"""The training loop on tiny models: freeze policy, LoRA, stage 1 -> 2, exact resume, crash safety."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlalign.config import dump_config
from vlalign.models.vlm import VisionLanguageModel
from vlalign.train import checkpoint as ckpt
from vlalign.train.loop import train
from vlalign.train.stages import apply_tune


def _trainable(model) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


def test_stage_freeze_policy(tiny_config):
    stage1 = tiny_config(1)
    model = VisionLanguageModel.from_config(stage1.model)
    assert apply_tune(model, 1, stage1.train.tune) == {"vision": "frozen", "connector": "full", "llm": "frozen"}
    assert _trainable(model) == {"multi_modal_projector"}

    stage2 = tiny_config(2, "train.tune.vision=full")
    model = VisionLanguageModel.from_config(stage2.model)
    apply_tune(model, 2, stage2.train.tune)
    assert _trainable(model) == {"vision_tower", "multi_modal_projector", "language_model"}


def test_lora_trains_only_adapters_and_keeps_names(tiny_config):
    config = tiny_config(2, "train.tune.llm=lora", "train.tune.lora.r=4")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 2, config.train.tune)
    llm_trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("language_model")]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert any(n.startswith("language_model.model.layers.0.self_attn.q_proj.lora_A") for n in llm_trainable)
    assert not any("lm_head" in n for n in llm_trainable)  # the head is not adapted


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "final" / ckpt.WEIGHTS_FILE))


def test_stage1_then_stage2_lora_and_generate(tiny_config, toy_data):
    stage1 = train(tiny_config(1, "train.max_steps=3"))
    metrics = [json.loads(line) for line in (stage1.parent / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["generative"] > 0 for m in metrics)
    saved = load_file(str(stage1 / ckpt.WEIGHTS_FILE))
    assert set(saved) == {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                          "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"}

    stage2_config = tiny_config(2, "train.max_steps=2", f"train.init_from={stage1}", "train.tune.llm=lora",
                                "train.tune.lora.r=4", "train.tune.connector=frozen")
    stage2 = train(stage2_config)
    after = load_file(str(stage2 / ckpt.WEIGHTS_FILE))
    # a frozen connector must come through stage 2 exactly as stage 1 left it.
    for name, tensor in saved.items():
        assert torch.equal(after[name], tensor)
    assert any("lora_A" in name for name in after)

    from vlalign.generate import answer, load_checkpoint_model

    model, config = load_checkpoint_model(stage2.parent)
    reply = answer(model, config, toy_data["image_root"] / "images" / "00000.png", "What color is it?",
                   max_new_tokens=5)
    assert isinstance(reply, str)
    ids = model.generate(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long), None, max_new_tokens=4,
                         do_sample=False, min_new_tokens=4)
    assert ids.shape == (1, 4)


def _run_cli(config, extra_env=None, resume=False) -> subprocess.CompletedProcess:
    config_path = Path(config.train.output_dir).with_suffix(".yaml")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(config, config_path)
    command = [sys.executable, "-m", "vlalign.cli", "train", str(config_path)] + (["--resume"] if resume else [])
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


RESUME_SETTINGS = ("train.max_steps=6", "train.save_every=2", "train.grad_accum=2", "train.batch_size=2",
                   "train.tune.llm=lora", "train.tune.lora.r=4", "train.tune.lora.dropout=0.3",
                   "train.weight_decay=0.01")


def test_killed_run_resumes_to_identical_weights(tiny_config, tmp_path):
    # Stage 2 with LoRA dropout: exercises optimizer, scheduler, sampler position and RNG restore at once.
    straight = tiny_config(2, *RESUME_SETTINGS, f"train.output_dir={tmp_path / 'straight'}")
    assert _run_cli(straight).returncode == 0

    interrupted = tiny_config(2, *RESUME_SETTINGS, f"train.output_dir={tmp_path / 'interrupted'}")
    killed = _run_cli(interrupted, {"VLALIGN_FAULT": "after_step_4"})
    assert killed.returncode == 17, killed.stderr[-2000:]
    out = tmp_path / "interrupted"
    assert ckpt.latest_checkpoint(out).name == "checkpoint-000004" and not (out / "final").exists()
    resumed = _run_cli(interrupted, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    expected, got = _final_weights(tmp_path / "straight"), _final_weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # And training did move the weights (the comparison is not between two untouched copies).
    start = tiny_config(2, *RESUME_SETTINGS)
    model = VisionLanguageModel.from_config(start.model)
    assert not torch.equal(model.multi_modal_projector.linear_1.weight, got["multi_modal_projector.linear_1.weight"])


def test_crash_while_saving_leaves_previous_checkpoint_usable(tiny_config, tmp_path):
    config = tiny_config(1, "train.max_steps=4", "train.save_every=2", f"train.output_dir={tmp_path / 'run'}")
    crashed = _run_cli(config, {"VLALIGN_FAULT": "before_state"})
    assert crashed.returncode == 17
    out = tmp_path / "run"
    # The half-written folder is a hidden staging folder; no checkpoint looks complete.
    assert ckpt.latest_checkpoint(out) is None
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert _run_cli(config, resume=True).returncode == 0  # nothing to resume from: starts over, finishes
    assert ckpt.is_complete(out / "final")


def test_full_stage2_with_gradient_checkpointing_matches_plain_backward(tiny_config, toy_data):
    from vlalign.data.build import build_dataset
    from vlalign.data.dataset import Collator
    from vlalign.data.llava_json import SkipReport
    from vlalign.objectives.generative import next_token_loss

    grads = []
    for checkpointing in (False, True):
        config = tiny_config(2, f"model.gradient_checkpointing={str(checkpointing).lower()}")
        torch.manual_seed(0)
        model = VisionLanguageModel.from_config(config.model)
        apply_tune(model, 2, config.train.tune)
        model.train()
        dataset = build_dataset(config, model, SkipReport())
        batch = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
        loss = next_token_loss(model(batch.input_ids, batch.attention_mask, batch.pixel_values), batch.labels)
        loss.backward()
        assert model.language_model.is_activation_checkpointing == checkpointing
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("language_model.model.layers.") for n in grads[0])  # the full LLM trains
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_consecutive_runs_in_one_process_may_change_precision(tiny_config):
    """accelerate's process-wide state would refuse the second run's bf16 (the demo trains two stages,
    and several objectives, in one process)."""
    plain = train(tiny_config(1, "train.max_steps=1", "train.mixed_precision='no'"))
    bf16 = train(tiny_config(2, "train.max_steps=1", f"train.init_from={plain}", "train.mixed_precision=bf16"))
    assert (bf16 / ckpt.WEIGHTS_FILE).is_file()
    assert "mixed_precision: bf16" in (bf16 / "config.yaml").read_text()


def _nan_on_calls(monkeypatch, calls: set[int]):
    """The generative term turns NaN on the given forward calls (1-based): a loss blow-up at a known step."""
    from vlalign.objectives.generative import Generative

    original, seen = Generative.forward, []

    def forward(self, output, batch, model):
        terms = original(self, output, batch, model)
        seen.append(list(batch.record_ids))
        if len(seen) in calls:
            terms.losses = {name: value * float("nan") for name, value in terms.losses.items()}
        return terms

    monkeypatch.setattr(Generative, "forward", forward)
    return seen


def test_a_nonfinite_loss_stops_the_run_before_the_update_naming_step_and_records(tiny_config, monkeypatch):
    import pytest

    from vlalign.errors import TrainingError

    seen = _nan_on_calls(monkeypatch, {2})
    config = tiny_config(1, "train.max_steps=3", "train.save_every=1", "train.keep_checkpoints=0")
    with pytest.raises(TrainingError, match=r"before update 2 .*'generative': nan.*records \[") as error:
        train(config)
    assert all(f"'{record}'" in str(error.value) for record in seen[1])  # the bad batch's records are named
    out = Path(config.train.output_dir)
    assert not (out / "final").exists()  # nothing is published after the blow-up
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000001"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]


def test_skip_batch_skips_nonfinite_updates_counts_them_and_stops_after_too_many_in_a_row(tiny_config,
                                                                                             monkeypatch):
    import math

    import pytest

    from vlalign.errors import TrainingError

    _nan_on_calls(monkeypatch, {2})
    final = train(tiny_config(1, "train.max_steps=3", "train.on_nonfinite=skip_batch"))
    assert json.loads((final.parent / "data_report.json").read_text())["nonfinite_updates_skipped"] == 1
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(math.isfinite(row["loss"]) for row in rows)
    assert all(torch.isfinite(t).all() for t in load_file(str(final / ckpt.WEIGHTS_FILE)).values())

    _nan_on_calls(monkeypatch, set(range(1, 100)))  # every step blows up
    with pytest.raises(TrainingError, match=r"2 updates in a row were non-finite"):
        train(tiny_config(1, "train.max_steps=3", "train.on_nonfinite=skip_batch", "train.max_nonfinite_in_a_row=2",
                          "train.output_dir=" + str(final.parent.parent / "again")))


def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path):
    import pytest
    from accelerate import Accelerator

    from vlalign.config import RunConfig
    from vlalign.errors import TrainingError

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="not writing .*ckpt: 1 weight tensors hold NaN or inf \\(weight\\)"):
        ckpt.save_checkpoint(tmp_path / "ckpt", Accelerator(cpu=True), model=model, objectives=torch.nn.ModuleDict(),
                             config=RunConfig(), state={"step": 1})
    assert not any(tmp_path.iterdir())  # not even a staging folder


def test_metrics_rows_are_valid_json_with_non_finite_values_as_null():
    from vlalign.train.progress import json_line

    line = json_line({"step": 3, "itm_accuracy": float("nan"), "loss": float("inf"), "lr": 1e-3})
    assert json.loads(line) == {"step": 3, "itm_accuracy": None, "loss": None, "lr": 1e-3}
    assert "NaN" not in line and "Infinity" not in line
