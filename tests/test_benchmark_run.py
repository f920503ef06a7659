"""`vlalign eval benchmarks` / `eval score` and the answers file: resume after a kill, refusal to mix runs,
the outputs' formats, clean errors; evaluation during training leaves the training untouched."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.cli import main
from vlalign.errors import ConfigError, DataError
from vlalign.eval.benchmark_run import prompts_for, run_benchmark
from vlalign.eval.benchmarks.answers_file import read_answers, read_predictions
from vlalign.eval.benchmarks.catalog import benchmark_named
from vlalign.train import checkpoint as ckpt
from vlalign.train.loop import train


def write_pope_file(folder, image_root, n=6):
    """POPE's own format (coco_pope_random.json: JSON lines question_id, image, text, label) on toy images."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": i + 1, "image": f"images/{i % 4:05d}.png", "text": f"Is there a circle number {i}?",
             "label": "yes" if i % 2 == 0 else "no"} for i in range(n)]
    (folder / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "coco_pope_random.json"


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory, tiny_models, toy_data):
    from vlalign.config import load_config

    out = tmp_path_factory.mktemp("stage2")
    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", f"model.llm={tiny_models['llm']}",
                                "model.max_length=128", f"data.train_file={toy_data['stage2']}",
                                f"data.image_root={toy_data['image_root']}", "data.format=chat", "train.stage=2",
                                f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=1",
                                "train.tune.llm=lora", "train.tune.lora.r=4"])
    return train(config)


def test_answers_file_reads_llava_format_and_names_bad_lines(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 3, "text": "Yes", "answer_id": "x"}\n{"question_id": "4", "text": "no"}\n')
    assert read_predictions(path) == {"3": "Yes", "4": "no"}  # LLaVA writes int ids; they match str ids
    path.write_text('{"question_id": 3, "text": "Yes"}\n{"question_id": 3, "text": "No"}\n')
    with pytest.raises(DataError, match="question '3' is answered twice"):
        read_predictions(path)
    path.write_text('{"question_id": 3, "text": "Yes"}\n{"question_id": 4, "tex')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        read_predictions(path)
    assert list(read_answers(path, torn_tail_ok=True)) == ["3"]  # a kill mid-write: the torn line is dropped
    path.write_text('{"text": "Yes"}\n')
    with pytest.raises(DataError, match="line 1 has no 'question_id'"):
        read_predictions(path)


def test_eval_benchmarks_resumes_after_an_interruption_and_refuses_another_run(stage2_checkpoint, toy_data,
                                                                               tmp_path, capsys):
    data = write_pope_file(tmp_path / "pope", toy_data["image_root"])
    args = ["eval", "benchmarks", "--checkpoint", str(stage2_checkpoint), "--benchmark", "pope", "--data", str(data),
            "--image-root", str(toy_data["image_root"]), "--batch-size", "4", "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    straight = read_answers(tmp_path / "straight" / "answers.jsonl")
    assert len(straight) == 6 and "6 questions" not in capsys.readouterr().err
    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["benchmark"] == "pope" and metrics["n"] == 6 and metrics["answered_now"] == 6
    per_sample = [json.loads(line) for line in (tmp_path / "straight" / "per_sample.jsonl").read_text().splitlines()]
    assert [row["question_id"] for row in per_sample] == [row["question_id"] for row in straight.values()]
    assert {"question_id", "prediction", "parsed", "gold", "correct"} <= set(per_sample[0])
    # The prompt is POPE's question + LLaVA-1.5's instruction.
    first = next(iter(straight.values()))
    assert first["prompt"] == "Is there a circle number 0?" + benchmark_named("pope").prompt_suffix

    # A kill after the first batch, in the middle of writing the second: 4 whole lines and a torn one.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run.json").write_text((tmp_path / "straight" / "run.json").read_text())
    lines = (tmp_path / "straight" / "answers.jsonl").read_text().splitlines(keepends=True)
    (resumed / "answers.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
    assert main([*args, "--out", str(resumed)]) == 0
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["answered_now"] == 2  # only what was missing
    assert read_answers(resumed / "answers.jsonl") == straight  # greedy: the same answers, in the same order
    assert again["metrics"] == metrics["metrics"]

    # Another benchmark setting into the same folder is refused (exit 2, one line), nothing overwritten.
    assert main([*args[:-1], "7", "--out", str(resumed)]) == 2
    assert "holds answers of another run (max_new_tokens differ" in capsys.readouterr().err
    assert read_answers(resumed / "answers.jsonl") == straight


def test_eval_benchmarks_fails_before_loading_on_a_missing_image(stage2_checkpoint, toy_data, tmp_path, capsys):
    data = write_pope_file(tmp_path / "pope", toy_data["image_root"])
    code = main(["eval", "benchmarks", "--checkpoint", str(stage2_checkpoint), "--benchmark", "pope",
                 "--data", str(data), "--image-root", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "images/00000.png not found" in err and "field 'image'" in err
    assert not (tmp_path / "out").exists()


def test_eval_score_scores_saved_predictions_and_reports_unmatched_ones(tmp_path, toy_data, capsys):
    data = write_pope_file(tmp_path / "pope", toy_data["image_root"], n=4)  # labels yes, no, yes, no
    records = benchmark_named("pope").read(data, tmp_path, None)
    ids = [r["question_id"] for r in records]
    answers = tmp_path / "answers.jsonl"
    # yes->"Yes, there is.", no->"Yes", yes->"No.", no->"There is no circle." + one id not in the set.
    texts = ["Yes, there is.", "Yes", "No.", "There is no circle."]
    answers.write_text("".join(json.dumps({"question_id": q, "text": t}) + "\n" for q, t in zip(ids, texts))
                       + json.dumps({"question_id": "elsewhere", "text": "yes"}) + "\n")
    assert main(["eval", "score", "pope", "--questions", str(data), "--predictions", str(answers),
                 "--out", str(tmp_path / "score")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "score" / "metrics.json").read_text())
    # official POPE reading: yes, yes, no, no against gold yes, no, yes, no -> TP 1, FP 1, FN 1, TN 1
    split = result["metrics"]["all"]
    assert (split["accuracy"], split["precision"], split["recall"], split["f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert result["unmatched_predictions"] == 1 and "1 predictions name no question" in printed
    # lmms-eval's reading accepts only bare yes/no: "Yes" (FP) is read, the three sentences are wrong.
    assert main(["eval", "score", "pope", "--questions", str(data), "--predictions", str(answers),
                 "--out", str(tmp_path / "lmms"), "--scoring", "lmms-eval"]) == 0
    lmms = json.loads((tmp_path / "lmms" / "metrics.json").read_text())["metrics"]["all"]
    assert lmms["accuracy"] == 0.0 and lmms["precision"] == 0.0

    answers.write_text(json.dumps({"question_id": ids[0], "text": "yes"}) + "\n")
    assert main(["eval", "score", "pope", "--questions", str(data), "--predictions", str(answers),
                 "--out", str(tmp_path / "missing")]) == 2
    assert f"no prediction for POPE question {ids[1]!r}" in capsys.readouterr().err


def test_run_benchmark_with_blank_images_differs_only_in_pixels(stage2_checkpoint, toy_data, tmp_path):
    from vlalign.train.load import load_checkpoint_model

    model, config = load_checkpoint_model(stage2_checkpoint)
    benchmark = benchmark_named("pope")
    records = benchmark.read(write_pope_file(tmp_path / "pope", toy_data["image_root"], n=2), tmp_path, None)
    result = run_benchmark(model, config, benchmark, records, tmp_path / "blank", image_root=toy_data["image_root"],
                           blank=True, max_new_tokens=3, progress=False)
    assert result["n"] == 2 and json.loads((tmp_path / "blank" / "run.json").read_text())["blank"] is True
    assert prompts_for(benchmark, records)[0].startswith("Is there a circle number 0?")


@pytest.mark.parametrize("precision", ["no", "bf16"])  # bf16: frozen weights in bf16, evaluation under autocast
def test_evaluation_during_training_leaves_the_weights_identical(precision, tiny_config, toy_data, tmp_path):
    from vlalign.eval.during_training import training_eval_hook

    data = write_pope_file(tmp_path / "pope", toy_data["image_root"])
    settings = ("train.max_steps=4", "train.tune.llm=lora", "train.tune.lora.r=4", "train.tune.lora.dropout=0.3",
                "train.batch_size=2", f"train.mixed_precision={precision}")
    plain = train(tiny_config(2, *settings, f"train.output_dir={tmp_path / 'plain'}"))
    config = tiny_config(2, *settings, f"train.output_dir={tmp_path / 'evaluated'}", "train.eval.every=2",
                         "train.eval.limit=4", "train.eval.max_new_tokens=3",
                         f'train.eval.benchmarks=[{{benchmark: pope, data: "{data}", '
                         f'image_root: "{toy_data["image_root"]}"}}, {{benchmark: pope, data: "{data}", '
                         f'image_root: "{toy_data["image_root"]}", scoring: lmms-eval}}]')
    evaluated = train(config, step_hooks=(training_eval_hook(config),))
    expected, got = load_file(str(plain / ckpt.WEIGHTS_FILE)), load_file(str(evaluated / ckpt.WEIGHTS_FILE))
    assert expected.keys() == got.keys() and any("lora_A" in name for name in got)
    for name in expected:  # LoRA dropout draws from the RNG: any draw by the evaluation would show here
        assert torch.equal(expected[name], got[name]), name
    rows = [json.loads(line) for line in (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/pope/POPE mean F1" in row]
    assert [row["step"] for row in evals] == [2, 4]
    step2 = json.loads((tmp_path / "evaluated" / "eval" / "step-000002" / "pope" / "metrics.json").read_text())
    assert step2["n"] == 4 and step2["step"] == 2
    assert evals[0]["eval/pope/POPE mean F1"] == step2["headline"]["POPE mean F1"]
    second = json.loads((tmp_path / "evaluated" / "eval" / "step-000002" / "pope_2" / "metrics.json").read_text())
    assert second["scoring"] == "lmms-eval" and "eval/pope_2/POPE acc" in evals[0]


def test_training_eval_config_errors_come_before_training(tiny_config, tmp_path):
    from vlalign.eval.during_training import training_eval_hook

    config = tiny_config(2, f"train.output_dir={tmp_path / 'x'}",
                         f'train.eval.benchmarks=[{{benchmark: popes, data: "{tmp_path}"}}]')
    with pytest.raises(ConfigError, match="unknown benchmark 'popes'"):
        training_eval_hook(config)


def test_a_step_hook_that_draws_random_numbers_cannot_shift_the_training_stream(tiny_config, tmp_path):
    import random

    import numpy as np

    settings = ("train.max_steps=3", "train.tune.llm=lora", "train.tune.lora.r=4", "train.tune.lora.dropout=0.3",
                "train.batch_size=2")
    plain = train(tiny_config(2, *settings, f"train.output_dir={tmp_path / 'plain'}"))

    def greedy_hook(model, config, step, total_steps):  # draws from every stream the training uses
        torch.rand(1000), random.random(), np.random.rand(10)
        assert not model.training  # evaluated in eval mode
        return {"drawn": 1.0}

    hooked = train(tiny_config(2, *settings, f"train.output_dir={tmp_path / 'hooked'}"), step_hooks=(greedy_hook,))
    expected, got = load_file(str(plain / ckpt.WEIGHTS_FILE)), load_file(str(hooked / ckpt.WEIGHTS_FILE))
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_eval_benchmarks_on_two_processes_equals_one(stage2_checkpoint, toy_data, tmp_path):
    """torchrun, two CPU processes (gloo): each answers every other question, the main one merges and scores."""
    import subprocess
    import sys

    from process_group_helpers import free_port

    port = free_port()
    data = write_pope_file(tmp_path / "pope", toy_data["image_root"], n=5)
    args = ["eval", "benchmarks", "--checkpoint", str(stage2_checkpoint), "--benchmark", "pope", "--data", str(data),
            "--image-root", str(toy_data["image_root"]), "--batch-size", "2", "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "-m", "vlalign.cli", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote") == 1  # the main process reports
    one_answers, two_answers = (read_answers(tmp_path / name / "answers.jsonl") for name in ("one", "two"))
    assert list(two_answers) == list(one_answers)  # merged back into the set's order
    assert {k: v["text"] for k, v in two_answers.items()} == {k: v["text"] for k, v in one_answers.items()}
    assert len(read_answers(tmp_path / "two" / "rank0" / "answers.jsonl")) == 3  # questions 0, 2, 4
    one, two_metrics = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert two_metrics["metrics"] == one["metrics"] and two_metrics["processes"] == 2
