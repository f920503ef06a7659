"""`vlalign demo`: the offline end-to-end run, with a report.

1. generate the shapes world (cached when present);  2. train the demo dual encoder and report its
zero-shot retrieval;  3. per objective run: stage 1 (connector) and stage 2 (LoRA) with the packaged
EfficientNet-Lite0 + SmolLM2-135M-Instruct;  4. evaluate on the held-out benchmark-style sets, with the
real images and with blank images (the text-only baseline);  5. write report.md + metrics.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from vlalign.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TEST_SETS = ("pope", "gqa", "sqa", "mme", "compositional_gqa")

# Objective runs the demo compares; later issues add contrastive, SEA and X-Former entries.
DEMO_OBJECTIVES: dict[str, dict] = {"generative": {"generative": {"weight": 1.0}}}


@dataclass(frozen=True)
class Preset:
    n_train: int
    n_test: int
    stage1_records: int
    stage2_records: int
    eval_per_set: int  # questions per test set (a deterministic sample)
    alignment_pairs: int  # held-out image-caption pairs for `eval alignment` after each stage
    dual_encoder_epochs: int


PRESETS = {
    "full": Preset(n_train=1500, n_test=200, stage1_records=1500, stage2_records=520, eval_per_set=100,
                   alignment_pairs=200, dual_encoder_epochs=15),
    "quick": Preset(n_train=48, n_test=16, stage1_records=48, stage2_records=32, eval_per_set=12,
                    alignment_pairs=16, dual_encoder_epochs=2),
}
COST_PER_SAMPLE = {"stage1": 0.27, "stage2": 0.9, "eval": 0.18, "image": 0.03, "alignment": 0.1}  # seconds, measured here


def estimate_seconds(preset: Preset, n_objectives: int) -> float:
    per_run = (preset.stage1_records * COST_PER_SAMPLE["stage1"] + preset.stage2_records * COST_PER_SAMPLE["stage2"]
               + 2 * len(TEST_SETS) * preset.eval_per_set * COST_PER_SAMPLE["eval"]
               + 2 * preset.alignment_pairs * COST_PER_SAMPLE["alignment"] + 60)
    world_and_encoder = (preset.n_train + preset.n_test) * COST_PER_SAMPLE["image"] * 2 + 20
    return world_and_encoder + n_objectives * per_run


def _subset(records: list, limit: int, seed: int) -> list:
    if len(records) <= limit:
        return records
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def _stage_summary(output_dir: Path, seconds: float) -> dict:
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {"steps": metrics[-1]["step"], "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"],
            "seconds": seconds}


def _train_stage(name: str, overrides: list[str]) -> tuple[Path, float]:
    from vlalign.train.loop import train

    started = time.perf_counter()
    final = train(load_config(CONFIGS / name, overrides))
    return final, time.perf_counter() - started


def _evaluate(model, config, world: Path, test_sets: dict[str, list], blank: bool) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    from vlalign.eval.qa import benchmark_metrics, predict

    evaluation, predictions = {}, {}
    total = sum(len(records) for records in test_sets.values())
    with tqdm(total=total, desc="eval (blank image)" if blank else "eval", dynamic_ncols=True) as bar:
        for name, records in test_sets.items():
            predictions[name] = predict(model, config, records, world, blank=blank, progress=bar)
            evaluation[name] = benchmark_metrics(name.split("_")[-1] if name.startswith("compositional")
                                                 else name, records, predictions[name])
    return evaluation, predictions


def _alignment(checkpoint: Path, world: Path, out: Path, preset: Preset, model=None, config=None) -> dict:
    """`vlalign eval alignment` on the held-out captions; one example picture set keeps the report short."""
    from vlalign.eval.alignment_command import run_alignment

    return run_alignment(checkpoint, world / "test" / "captions.json", out, image_root=world,
                         limit=preset.alignment_pairs, examples=1, model=model, config=config)


def run_objective(name: str, objectives: dict, world: Path, run_dir: Path, preset: Preset,
                  test_sets: dict[str, list]) -> dict:
    from vlalign.generate import load_checkpoint_model

    data = [f"data.image_root={world}"]
    objective_sets = [f"objectives={json.dumps(objectives)}"]
    stage1, stage1_s = _train_stage("quickstart-stage1.yaml", [
        *data, f"data.train_file={run_dir / 'stage1_train.json'}", f"train.output_dir={run_dir / 'stage1'}",
        "train.batch_size=16", "train.lr=2e-3", *objective_sets])  # seed 000's stage-1 learning rate
    stage2, stage2_s = _train_stage("quickstart-stage2.yaml", [
        *data, f"data.train_file={run_dir / 'stage2_train.json'}", f"train.output_dir={run_dir / 'stage2'}",
        f"train.init_from={stage1}"])
    alignment = {"stage1": _alignment(stage1, world, run_dir / "alignment_stage1", preset)}
    model, config = load_checkpoint_model(stage2)
    alignment["stage2"] = _alignment(stage2, world, run_dir / "alignment_stage2", preset, model, config)
    evaluation, predictions = _evaluate(model, config, world, test_sets, blank=False)
    baseline, blank_predictions = _evaluate(model, config, world, test_sets, blank=True)
    samples = [{"image": r["image"], "question": r["question"], "gold": r["answer"],
                "answer": predictions["gqa"][i], "blank_answer": blank_predictions["gqa"][i]}
               for i, r in enumerate(test_sets["gqa"][:8])]
    return {"objectives": objectives, "visual_tokens": model.num_visual_tokens, "stage1": _stage_summary(run_dir / "stage1", stage1_s),
            "stage2": _stage_summary(run_dir / "stage2", stage2_s), "eval": evaluation,
            "text_only_baseline": baseline, "samples": samples, "alignment": alignment}


def run_demo(out: Path, quick: bool = False, seed: int = 0, objectives: list[str] | None = None) -> dict:
    from vlalign.data.shapes import generate_world, is_cached
    from vlalign.dual_encoder.train import train_dual_encoder
    from vlalign.eval.report import render_report

    started = time.perf_counter()
    preset = PRESETS["quick" if quick else "full"]
    names = objectives or list(DEMO_OBJECTIVES)
    print(f"[demo] preset {'quick' if quick else 'full'}: {preset.n_train} train / {preset.n_test} test images, "
          f"objectives {names}; estimated {estimate_seconds(preset, len(names)) / 60:.0f} min on a 2-core CPU "
          f"(+~30 s the first time, to convert the packaged SmolLM2 GGUF)")
    world = out / "world"
    if not is_cached(world, preset.n_train, preset.n_test, seed):
        generate_world(world, preset.n_train, preset.n_test, seed=seed)
    else:
        print(f"[demo] reusing the world in {world}")

    encoder_started = time.perf_counter()
    encoder_report = train_dual_encoder(world / "stage1.json", world, out / "dual_encoder",
                                        epochs=preset.dual_encoder_epochs, seed=seed,
                                        test_json=world / "test" / "captions.json")
    dual_encoder = {"retrieval": encoder_report["test"]["retrieval"],
                    "modality_gap": encoder_report["test"]["modality_gap"],
                    "seconds": time.perf_counter() - encoder_started}

    test_sets = {name: _subset(json.loads((world / "test" / f"{name}.json").read_text()), preset.eval_per_set,
                               seed) for name in TEST_SETS}
    runs = {}
    for name in names:
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        stage1_records = json.loads((world / "stage1.json").read_text())
        stage2_records = json.loads((world / "stage2.json").read_text())
        (run_dir / "stage1_train.json").write_text(json.dumps(_subset(stage1_records, preset.stage1_records, seed)))
        (run_dir / "stage2_train.json").write_text(json.dumps(_subset(stage2_records, preset.stage2_records, seed)))
        runs[name] = run_objective(name, DEMO_OBJECTIVES[name], world, run_dir, preset, test_sets)

    manifest = json.loads((world / "manifest.json").read_text())
    stage1_config = load_config(CONFIGS / "quickstart-stage1.yaml")
    info = {"preset": "quick" if quick else "full", "runtime_s": time.perf_counter() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU",
            "vision_tower": stage1_config.model.vision_tower, "llm": stage1_config.model.llm,
            "visual_tokens": runs[names[0]]["visual_tokens"], "world_counts": manifest.get("counts", {}), "dual_encoder": dual_encoder}
    (out / "metrics.json").write_text(json.dumps(runs, indent=2))
    (out / "run.json").write_text(json.dumps(info, indent=2))
    (out / "report.md").write_text(render_report(runs, info))
    print(f"[demo] done in {info['runtime_s'] / 60:.1f} min; report: {out / 'report.md'}, "
          f"metrics: {out / 'metrics.json'}")
    return {"runs": runs, "info": info}
