"""A run folder belongs to one run: a new run never mixes with (or prunes, or resumes) another run's checkpoints,
and --resume falls back from a corrupt newest checkpoint, says when a run has finished, and refuses `final`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlalign.errors import ConfigError
from vlalign.train import checkpoint as ckpt
from vlalign.train.loop import train


def _weights(folder: Path) -> bytes:
    return (folder / ckpt.WEIGHTS_FILE).read_bytes()


def _run_id(folder: Path) -> str:
    return json.loads((folder / ckpt.STATE_FILE).read_text())["run_id"]


def test_a_new_run_into_a_used_folder_is_refused_or_moves_the_old_run_aside(tiny_config, tmp_path):
    out = tmp_path / "run"
    settings = ("train.max_steps=2", "train.save_every=1", "train.keep_checkpoints=0", f"train.output_dir={out}")
    first = train(tiny_config(1, *settings))
    first_weights, first_id = _weights(first), _run_id(first)
    logs = ["tensorboard"] if (out / "tensorboard").is_dir() else []  # where the TensorBoard package is installed
    with pytest.raises(ConfigError, match=r"holds another run \(checkpoint-000001, final\): continue it with "
                                          r"--resume.*--overwrite"):
        train(tiny_config(1, *settings, "train.lr=5e-4"))
    assert _weights(out / "final") == first_weights  # refused before anything was touched

    second = train(tiny_config(1, *settings, "train.lr=5e-4"), overwrite=True)
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == sorted(["checkpoint-000001", "config.yaml", "data_report.json",
                                                                 "final", "metrics.jsonl", "run.json", *logs])
    assert _weights(aside[0] / "final") == first_weights and _run_id(aside[0] / "final") == first_id  # kept whole
    assert _run_id(second) != first_id and _run_id(out / "checkpoint-000001") == _run_id(second)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]  # the new run's rows only


def test_resume_and_pruning_touch_only_this_runs_checkpoints(tiny_config, tmp_path, capsys):
    """The data-loss case: an older run's checkpoint with a higher step number in the folder (copied in by hand
    here; before run ids a second run left them there) is neither resumed nor pruned."""
    other = train(tiny_config(1, "train.max_steps=6", "train.save_every=5", f"train.output_dir={tmp_path / 'old'}"))
    out = tmp_path / "run"
    train(tiny_config(1, "train.max_steps=3", "train.save_every=1", "train.keep_checkpoints=2",
                      f"train.output_dir={out}"))
    shutil.rmtree(out / "final")  # as if killed after its last checkpoint
    shutil.copytree(other.parent / "checkpoint-000005", out / "checkpoint-000005")
    capsys.readouterr()
    final = train(tiny_config(1, "train.max_steps=3", "train.save_every=1", "train.keep_checkpoints=1",
                              f"train.output_dir={out}"), resume=True)
    assert f"resumed from {out / 'checkpoint-000002'}" in capsys.readouterr().out
    assert json.loads((final / ckpt.STATE_FILE).read_text())["step"] == 3
    assert (out / "checkpoint-000005").is_dir()  # another run's: never pruned
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]  # step 3 logged once, not again after the resume


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_and_resumes_exactly(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    settings = ("train.max_steps=4", "train.save_every=1", "train.keep_checkpoints=0", f"train.output_dir={out}")
    expected = _weights(train(tiny_config(1, *settings)))
    shutil.rmtree(out / "final")  # killed before the end: the newest checkpoint is step 3
    (out / "checkpoint-000003" / "optimizer.pt").write_bytes(b"\x00 half a file")
    capsys.readouterr()
    final = train(tiny_config(1, *settings), resume=True)
    printed = capsys.readouterr().out
    assert f"checkpoint {out / 'checkpoint-000003'} is unreadable" in printed
    assert "trying the previous one, checkpoint-000002" in printed
    assert f"resumed from {out / 'checkpoint-000002'}" in printed
    assert _weights(final) == expected  # bit-identical to the run that was never interrupted


def test_resume_of_a_finished_run_or_of_final_is_a_clear_error(tiny_config, tmp_path):
    out = tmp_path / "run"
    settings = ("train.max_steps=2", f"train.output_dir={out}")
    final = train(tiny_config(1, *settings))
    with pytest.raises(ConfigError, match="has finished .*train.init_from="):
        train(tiny_config(1, *settings), resume=True)
    with pytest.raises(ConfigError, match=r"final: it holds weights but no optimizer.pt / scheduler.pt .*init_from"):
        train(tiny_config(1, *settings), resume=str(final))


def _interrupted_after_step_2(tiny_config, out: Path, *settings) -> None:
    """A run of 4 steps whose files look as if it was killed right after its step-2 checkpoint."""
    train(tiny_config(1, "train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=0",
                      f"train.output_dir={out}", *settings))
    shutil.rmtree(out / "final")


def test_resume_refuses_changes_that_break_exactness_and_applies_an_lr_change_only_when_allowed(tiny_config,
                                                                                              tmp_path, capsys):
    out = tmp_path / "run"
    base = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=0", f"train.output_dir={out}",
            "train.warmup_ratio=0")
    _interrupted_after_step_2(tiny_config, out, "train.warmup_ratio=0")
    with pytest.raises(ConfigError, match=r"would break its exact continuation: train.batch_size: 4 -> 2; "
                                          r"train.seed: 0 -> 1\."):
        train(tiny_config(1, *base, "train.batch_size=2", "train.seed=1"), resume=True)
    with pytest.raises(ConfigError, match=r"learning-rate schedule differs .*train.lr: 0.001 -> 0.0005.*--allow-changes"):
        train(tiny_config(1, *base, "train.lr=5e-4"), resume=True)

    capsys.readouterr()
    final = train(tiny_config(1, *base, "train.lr=5e-4"), resume=True, allow_changes=True)
    assert "applies a changed setting: train.lr: 0.001 -> 0.0005" in capsys.readouterr().out
    assert "lr: 0.0005" in (final / "config.yaml").read_text()  # final/config.yaml tells the truth
    state = json.loads((final / ckpt.STATE_FILE).read_text())
    assert state["config_changes"] == [{"step": 2, "changes": ["train.lr: 0.001 -> 0.0005"]}]
    # the new rate took effect from step 3 on: the same rates as a run at 5e-4 from the start
    straight = train(tiny_config(1, *base[:3], f"train.output_dir={tmp_path / 'straight'}", "train.warmup_ratio=0",
                                 "train.lr=5e-4"))
    rates = {name: [row["lr"] for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
             for name, folder in (("resumed", out), ("straight", straight.parent))}
    assert rates["resumed"][2:] == rates["straight"][2:] and rates["resumed"][1] != rates["straight"][1]


def test_resume_applies_a_longer_run_and_says_so(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    _interrupted_after_step_2(tiny_config, out)
    capsys.readouterr()
    final = train(tiny_config(1, "train.max_steps=5", "train.save_every=2", "train.keep_checkpoints=0",
                              f"train.output_dir={out}"), resume=True)
    assert "applies a changed setting: train.max_steps: 4 -> 5" in capsys.readouterr().out
    assert json.loads((final / ckpt.STATE_FILE).read_text())["step"] == 5


def test_what_a_run_reads_and_writes_is_checked_before_any_weights_load(tiny_config, tmp_path, monkeypatch):
    import torch

    from vlalign.models.vlm import VisionLanguageModel

    monkeypatch.setattr(VisionLanguageModel, "from_config",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded"))))
    (tmp_path / "a-file").write_text("")
    cases = [("data.train_file=" + str(tmp_path / "missing.json"), "data.train_file .*missing.json does not exist"),
             ("data.image_root=" + str(tmp_path / "no-images"), "data.image_root .*no-images is not a folder"),
             ("train.init_from=" + str(tmp_path), "train.init_from .* holds no vlalign checkpoint"),
             ("train.output_dir=" + str(tmp_path / "a-file" / "run"), "train.output_dir .*a-file/run cannot be written")]
    if not torch.cuda.is_available():
        cases.append(("train.mixed_precision=fp16", "fp16 needs a CUDA GPU"))
    for setting, says in cases:
        with pytest.raises(ConfigError, match=says):
            train(tiny_config(1, "train.max_steps=1", setting))


def test_a_full_disk_while_saving_is_one_error_and_leaves_nothing_loadable(tiny_config, tmp_path, monkeypatch):
    import errno

    from vlalign.errors import TrainingError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(ckpt, "save_file", full)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=rf"cannot write checkpoint {out}/checkpoint-000001: No space left on "
                                            rf"device \(.*model.safetensors\); the earlier checkpoints"):
        train(tiny_config(1, "train.max_steps=2", "train.save_every=1", f"train.output_dir={out}"))
    assert ckpt.latest_checkpoint(out) is None and not (out / "final").exists()
