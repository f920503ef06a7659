"""`vlalign demo`: the offline end-to-end run, with a report.

1. generate the shapes world (cached when present);  2. train the demo dual encoder and report its
zero-shot retrieval;  3. per objective recipe (vlalign.demo.recipes): its pre-steps, then stage 1
(connector) and stage 2 (LoRA) with the packaged EfficientNet-Lite0 + SmolLM2-135M-Instruct;
4. evaluate on the held-out benchmark-style sets, with the real images and with blank images (the
text-only baseline);  5. write report.md + metrics.json.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import random
import resource
import time
from pathlib import Path

import torch

from vlalign.config import load_config
from vlalign.data.shapes import generate_world, is_cached
from vlalign.demo.evaluation import demo_sets, evaluate_sets
from vlalign.demo.presets import CONFIGS, PRESETS, STAGE2_LR, Preset, estimate_seconds
from vlalign.demo.prestep import PRE_STEP_FUNCTIONS, DemoContext, RunPatches
from vlalign.demo.recipes import RECIPES, Recipe, resolve_objectives
from vlalign.demo.steps import dual_encoder, inference_autocast, stage_summary, train_stage, training_precision
from vlalign.eval.alignment_command import run_alignment
from vlalign.eval.report import render_report
from vlalign.models.connectors import connector_class
from vlalign.train.load import checkpoint_fingerprint, load_checkpoint_model, resolve_checkpoint


def _subset(records: list, limit: int, seed: int) -> list:
    if len(records) <= limit:
        return records
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def _alignment(checkpoint: Path, world: Path, out: Path, preset: Preset, model=None, config=None) -> dict:
    """`vlalign eval alignment` on the held-out captions; one example picture set keeps the report short."""
    return run_alignment(checkpoint, world / "test" / "captions.json", out, image_root=world,
                         limit=preset.alignment_pairs, examples=1, model=model, config=config)


def _train_stages(ctx: DemoContext, patches: RunPatches) -> tuple[Path, Path, dict]:
    # Stage 1 keeps the quickstart's batch 8 / lr 1e-3 and runs 2 epochs (375 updates): with 1 epoch of
    # 1200 captions (150 updates) stage 2 never learned to use the image on this CPU (GQA-style 0.34 vs
    # 0.33 blank, with stage-2 batch 8 or 4); with 2 epochs of 1500, 0.46 vs 0.33. In the GPU sweep, too,
    # the runs whose answers used the image were those with the most stage-1 updates.
    run_dir = ctx.run_dir
    stage1, stage1_s = train_stage("quickstart-stage1.yaml", [
        patches.common, {"objectives": patches.objectives}, patches.stage1,
        {"data": {"train_file": str(run_dir / "stage1_train.json")},
         "train": {"output_dir": str(run_dir / "stage1"), "epochs": ctx.preset.stage1_epochs}}])
    stage2, stage2_s = train_stage("quickstart-stage2.yaml", [patches.common, {
        "data": {"train_file": str(run_dir / "stage2_train.json")},
        "train": {"output_dir": str(run_dir / "stage2"), "init_from": str(stage1), "lr": STAGE2_LR}}])
    return stage1, stage2, {"stage1": stage_summary(run_dir / "stage1", stage1_s),
                            "stage2": stage_summary(run_dir / "stage2", stage2_s)}


def run_recipe(recipe: Recipe, ctx: DemoContext, test_sets: dict[str, list]) -> dict:
    """Pre-steps, both stages, diagnostics and evaluation of one recipe; the run's entry in metrics.json."""
    world = ctx.world
    # the frozen tower's features are shared by both stages and every run of this demo folder
    common = {"data": {"image_root": str(world), "vision_feature_cache": str(ctx.out / "vision_features")},
              "train": {"mixed_precision": training_precision()}}
    if recipe.model:
        common["model"] = copy.deepcopy(recipe.model)  # a copy the pre-steps may fill in
        if connector_class(recipe.model.get("connector", "mlp2x_gelu")).reads_pixels:
            common["data"]["cache_vision_features"] = False  # X-Former's MAE branch reads the pixels every step
    stage1 = {"train": copy.deepcopy(recipe.stage1_train)} if recipe.stage1_train else {}
    patches, reports = RunPatches(objectives=copy.deepcopy(recipe.objectives), common=common, stage1=stage1), {}
    for step in recipe.pre_steps:
        patches, report = PRE_STEP_FUNCTIONS[step](ctx, patches)
        reports.update(report)
    stage1, stage2, stages = _train_stages(ctx, patches)
    return {"objectives": patches.objectives, **({"stage1_train": recipe.stage1_train} if recipe.stage1_train else {}),
            **_evaluate_run(ctx, stage1, stage2, test_sets), **stages, **reports}


def _evaluate_run(ctx: DemoContext, stage1: Path, stage2: Path, test_sets: dict[str, list]) -> dict:
    """Alignment diagnostics after each stage (float32: they are measurements), the held-out sets with real and
    blank images (answered under the training autocast), sample answers."""
    world = ctx.world
    clock = time.perf_counter()
    alignment = {"stage1": _alignment(stage1, world, ctx.run_dir / "alignment_stage1", ctx.preset)}
    model, config = load_checkpoint_model(stage2, merge_adapters=True)
    alignment["stage2"] = _alignment(stage2, world, ctx.run_dir / "alignment_stage2", ctx.preset, model, config)
    seconds = {"alignment": time.perf_counter() - clock}
    folder = resolve_checkpoint(stage2)
    identity = {"checkpoint": str(folder), "weights": checkpoint_fingerprint(folder)}
    clock = time.perf_counter()
    with inference_autocast():
        evaluation = evaluate_sets(model, config, world, test_sets, ctx.run_dir / "eval", False, identity)
        seconds["eval"] = time.perf_counter() - clock
        baseline = evaluate_sets(model, config, world, test_sets, ctx.run_dir / "eval_blank", True, identity)
    seconds["eval_blank"] = time.perf_counter() - clock - seconds["eval"]
    samples = _sample_answers(ctx.run_dir, test_sets["gqa"][:8])
    return {"visual_tokens": model.num_visual_tokens, "seconds": seconds, "eval": evaluation,
            "text_only_baseline": baseline, "samples": samples, "alignment": alignment}


def _sample_answers(run_dir: Path, records: list[dict]) -> list[dict]:
    """A few GQA answers with the image and with a blank image, for the report."""
    def answers(folder: str) -> dict[str, str]:
        rows = (run_dir / folder / "gqa" / "per_sample.jsonl").read_text().splitlines()
        return {row["question_id"]: row["prediction"] for row in map(json.loads, rows)}

    real, blank = answers("eval"), answers("eval_blank")
    return [{"image": r["image"], "question": r["question"], "gold": r["answer"], "answer": real[r["question_id"]],
             "blank_answer": blank[r["question_id"]]} for r in records]


def earlier_runs(out: Path, preset_name: str, seed: int) -> dict:
    """Objective runs of earlier `vlalign demo` calls into the same folder, same preset and seed: the
    comparison grows one `--objectives` call at a time (each run is ~18 min here)."""
    path = out / "metrics.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    kept = {name: run for name, run in earlier.items()
            if run.get("preset") == preset_name and run.get("seed") == seed and name in RECIPES}
    if kept:
        print(f"[demo] keeping earlier runs from {path}: {', '.join(kept)}")
    return kept


def _machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {gpu}"


def _prepare_world(out: Path, preset: Preset, seed: int) -> tuple[Path, dict[str, list]]:
    world = out / "world"
    if not is_cached(world, preset.n_train, preset.n_test, seed):
        generate_world(world, preset.n_train, preset.n_test, seed=seed)
    else:
        print(f"[demo] reusing the world in {world}")
    return world, demo_sets(world, preset.eval_per_set, seed)


def _write_run_subsets(world: Path, run_dir: Path, preset: Preset, seed: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage, limit in (("stage1", preset.stage1_records), ("stage2", preset.stage2_records)):
        records = json.loads((world / f"{stage}.json").read_text())
        (run_dir / f"{stage}_train.json").write_text(json.dumps(_subset(records, limit, seed)))


def run_demo(out: Path, quick: bool = False, seed: int = 0, objectives: list[str] | None = None) -> dict:
    started = time.perf_counter()
    preset_name = "quick" if quick else "full"
    preset = PRESETS[preset_name]
    names = resolve_objectives(objectives)
    print(f"[demo] preset {preset_name}: {preset.n_train} train / {preset.n_test} test images, objectives {names}; "
          f"estimated {estimate_seconds(preset, [RECIPES[n] for n in names]) / 60:.0f} min on a 2-core CPU "
          f"(+~30 s the first time, to convert the packaged SmolLM2 GGUF)")
    world, test_sets = _prepare_world(out, preset, seed)
    encoder = dual_encoder(world, out / "dual_encoder", preset, seed)
    runs = earlier_runs(out, preset_name, seed)
    stage1_config = load_config(CONFIGS / "quickstart-stage1.yaml")
    for name in names:
        ctx = DemoContext(world, out, out / name, preset, seed, stage1_config.model.image_aspect)
        _write_run_subsets(world, ctx.run_dir, preset, seed)
        runs[name] = {**run_recipe(RECIPES[name], ctx, test_sets), "preset": preset_name, "seed": seed}
        (out / "metrics.json").write_text(json.dumps(runs, indent=2))  # after each run: nothing lost on a stop
    manifest = json.loads((world / "manifest.json").read_text())
    info = {"preset": preset_name, "runtime_s": time.perf_counter() - started, "objectives_run": names,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "machine": _machine(),
            "vision_tower": stage1_config.model.vision_tower, "llm": stage1_config.model.llm,
            "visual_tokens": runs[names[0]]["visual_tokens"], "world_counts": manifest.get("counts", {}),
            "dual_encoder": encoder, "out": str(out)}
    (out / "run.json").write_text(json.dumps(info, indent=2))
    (out / "report.md").write_text(render_report(runs, info))
    print(f"[demo] done in {info['runtime_s'] / 60:.1f} min; report: {out / 'report.md'}, "
          f"metrics: {out / 'metrics.json'}")
    return {"runs": runs, "info": info}
