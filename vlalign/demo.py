"""`vlalign demo`: the offline end-to-end run, with a report.

1. generate the shapes world (cached when present);  2. train the demo dual encoder and report its
zero-shot retrieval;  3. per objective run: stage 1 (connector) and stage 2 (LoRA) with the packaged
EfficientNet-Lite0 + SmolLM2-135M-Instruct (the `qformer` / `xformer` runs first pre-train their query
connector, see demo_query.py);  4. evaluate on the held-out benchmark-style sets, with the
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

# Objective runs the demo can compare: name -> the stage-1 `objectives` config. Stage 2 is always plain
# instruction tuning (generative), as in every seed paper, so the columns differ by alignment only.
DEMO_OBJECTIVES: dict[str, dict] = {
    "generative": {"generative": {"weight": 1.0}},
    "generative+eos_contrastive": {"generative": {"weight": 1.0}, "eos_contrastive": {"weight": 1.0}},
    "generative+eos_contrastive+prompt": {"generative": {"weight": 1.0},
                                          "eos_contrastive": {"weight": 1.0, "prompt": True}},
    "generative+cg_contrastive": {"generative": {"weight": 1.0}, "cg_contrastive": {"weight": 1.0}},
    # `labels` is filled in at run time: the demo labels the world's training images itself (_patch_labels).
    "generative+sea": {"generative": {"weight": 1.0}, "sea": {"weight": 1.0}},
    # Query connectors (seed 002): pre-training with these objectives, then LLM alignment (generative)
    # through their FC layer; see demo_query.py.
    "qformer": {"qformer": {}},
    "xformer": {"xformer": {}},
}
DEFAULT_OBJECTIVES = ("generative",)


def resolve_objectives(names: list[str] | None) -> list[str]:
    """None -> the default run; ["all"] -> every registered demo run; else the names, checked."""
    if not names:
        return list(DEFAULT_OBJECTIVES)
    if names == ["all"]:
        return list(DEMO_OBJECTIVES)
    unknown = [name for name in names if name not in DEMO_OBJECTIVES]
    if unknown:
        from vlalign.errors import ConfigError

        raise ConfigError(f"unknown demo objective run(s) {unknown}; choose from: {', '.join(DEMO_OBJECTIVES)} or all")
    return names


@dataclass(frozen=True)
class Preset:
    n_train: int
    n_test: int
    stage1_records: int
    stage2_records: int
    eval_per_set: int  # questions per test set (a deterministic sample)
    alignment_pairs: int  # held-out image-caption pairs for `eval alignment` after each stage
    dual_encoder_epochs: int
    stage1_epochs: int = 1
    query_pretrain_epochs: int = 1  # qformer / xformer pre-training (at batch 16) before LLM alignment
    mae_epochs: int = 1  # the demo MAE for xformer (`vlalign pretrain-mae` on the world's training images)
    sea_words: str | None = None  # `label-patches --words`; None: its default (English list + world vocabulary)


PRESETS = {
    "full": Preset(n_train=1500, n_test=200, stage1_records=1500, stage2_records=1000, eval_per_set=100,
                   alignment_pairs=200, dual_encoder_epochs=15, stage1_epochs=2, query_pretrain_epochs=2,
                   mae_epochs=4),
    "quick": Preset(n_train=48, n_test=16, stage1_records=48, stage2_records=32, eval_per_set=12,
                    alignment_pairs=16, dual_encoder_epochs=2, sea_words="shapes"),  # 64K words: +1 min
}
# Seconds per sample measured here (2-core x86_64 with AVX512-BF16, training under bf16 autocast).
COST_PER_SAMPLE = {"stage1": 0.12, "stage2": 0.42, "eval": 0.14, "image": 0.03, "alignment": 0.14,
                   "query_pretrain": 0.09, "mae": 0.012}
# Stage-2 LoRA learning rate. LLaVA's 2e-4 is tuned for 7B models and thousands of steps; with the demo's
# ~125-175 steps a sweep (GPU, same data and seeds) gave GQA-style accuracy 0.32 / 0.31 / 0.36 at 2e-4 / 5e-4
# / 1e-3, and the blank-image baseline 0.27 / 0.28 / 0.32.
STAGE2_LR = 1e-3
ALIGN_LR = 3e-4  # qformer / xformer LLM alignment: a fresh FC layer on a pre-trained former (seed 002: 1e-4)


def training_precision() -> str:
    """bf16 autocast where the hardware runs it natively (1.45x faster stage-2 steps on this CPU), else fp32:
    emulated bf16 on an older CPU would be slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def estimate_seconds(preset: Preset, names: list[str]) -> float:
    per_run = (preset.stage1_records * preset.stage1_epochs * COST_PER_SAMPLE["stage1"] + preset.stage2_records * COST_PER_SAMPLE["stage2"]
               + 2 * len(TEST_SETS) * preset.eval_per_set * COST_PER_SAMPLE["eval"]
               + 2 * preset.alignment_pairs * COST_PER_SAMPLE["alignment"] + 60)
    query_runs = sum(name in ("qformer", "xformer") for name in names)  # + pre-training (and the MAE once)
    query = (query_runs * preset.stage1_records * preset.query_pretrain_epochs * COST_PER_SAMPLE["query_pretrain"]
             + ("xformer" in names) * preset.n_train * preset.mae_epochs * COST_PER_SAMPLE["mae"])
    world_and_encoder = (preset.n_train + preset.n_test) * COST_PER_SAMPLE["image"] * 2 + 20
    return world_and_encoder + len(names) * per_run + query


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
                  test_sets: dict[str, list], mae_folder: Path | None = None) -> dict:
    from vlalign.demo_query import QUERY_RUNS, connector_overrides, pretrain_query_former
    from vlalign.generate import load_checkpoint_model

    common = [f"data.image_root={world}", f"train.mixed_precision='{training_precision()}'"]
    objective_sets, connector_sets, query = [f"objectives={json.dumps(objectives)}"], [], {}
    if name in QUERY_RUNS:  # pre-training first; "stage 1" is then the paper's LLM alignment
        connector_sets = connector_overrides(name, mae_folder)
        pretrained, query = pretrain_query_former(name, world, run_dir, [*common, *connector_sets],
                                                  preset.query_pretrain_epochs, preset.alignment_pairs)
        objective_sets = ['objectives={"generative": {"weight": 1.0}}', f"train.init_from={pretrained}",
                          f"train.lr={ALIGN_LR}"]
    # Stage 1 keeps the quickstart's batch 8 / lr 1e-3 and runs 2 epochs (375 updates): with 1 epoch of
    # 1200 captions (150 updates) stage 2 never learned to use the image on this CPU (GQA-style 0.34 vs
    # 0.33 blank, with stage-2 batch 8 or 4); with 2 epochs of 1500, 0.46 vs 0.33. In the GPU sweep, too,
    # the runs whose answers used the image were those with the most stage-1 updates.
    stage1, stage1_s = _train_stage("quickstart-stage1.yaml", [
        *common, *connector_sets, f"data.train_file={run_dir / 'stage1_train.json'}",
        f"train.output_dir={run_dir / 'stage1'}", f"train.epochs={preset.stage1_epochs}", *objective_sets])
    stage2, stage2_s = _train_stage("quickstart-stage2.yaml", [
        *common, *connector_sets, f"data.train_file={run_dir / 'stage2_train.json'}", f"train.output_dir={run_dir / 'stage2'}",
        f"train.init_from={stage1}", f"train.lr={STAGE2_LR}"])
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
            "text_only_baseline": baseline, "samples": samples, "alignment": alignment, **query}


SETTINGS_FILE = "demo_settings.json"


def saved_settings(folder: Path, settings: dict) -> dict | None:
    """What an earlier demo run recorded in `folder` when it made that folder's model with these same
    `settings` (it may add more, e.g. its time); None when it made it otherwise or not at all."""
    path = folder / SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved if saved and {key: saved.get(key) for key in settings} == settings else None


def _dual_encoder(world: Path, folder: Path, preset: Preset, seed: int) -> dict:
    """Train the demo dual encoder, or reuse the one a previous demo run left for the same world."""
    from vlalign.dual_encoder.train import train_dual_encoder

    started = time.perf_counter()
    report_path = folder / "report.json"
    settings = {"epochs": preset.dual_encoder_epochs, "seed": seed, "world": json.loads((world / "manifest.json").read_text())}
    saved = saved_settings(folder, settings)
    if report_path.is_file() and saved is not None:
        print(f"[demo] reusing the dual encoder in {folder}")
        report = json.loads(report_path.read_text())
        seconds, reused = saved.get("seconds", 0.0), True
    else:
        report = train_dual_encoder(world / "stage1.json", world, folder, epochs=preset.dual_encoder_epochs, seed=seed,
                                    test_json=world / "test" / "captions.json")
        seconds, reused = time.perf_counter() - started, False
        (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "seconds": seconds}))
    return {"retrieval": report["test"]["retrieval"], "modality_gap": report["test"]["modality_gap"],
            "seconds": seconds, "reused": reused}


def _patch_labels(world: Path, out: Path, config, words_spec: str | None = None) -> tuple[Path, dict]:
    """SEA's offline step: the demo dual encoder labels the world's training images (reused when done).

    Words: Debian's English list plus the world's vocabulary (the default of `vlalign label-patches`), or
    the vocabulary alone where the English list is not installed. The folder is keyed by the encoder's
    fingerprint and the word source, so a retrained encoder or another list never reuses stale labels.
    """
    from vlalign.errors import ConfigError
    from vlalign.labels.labeller import collect_images, label_images, load_encoder
    from vlalign.labels.words import resolve_words

    try:
        words, source = resolve_words(words_spec, world)
    except ConfigError as exc:
        print(f"[demo] SEA labels from the shapes vocabulary only ({exc})")
        words, source = resolve_words("shapes", world)
    encoder_folder = out / "dual_encoder"
    encoder, fingerprint = load_encoder(str(encoder_folder))
    folder = out / "sea_labels" / f"{fingerprint[:12]}-{source.replace('+', '_')}"
    summary = label_images(encoder, collect_images(world / "stage1.json", world), words, folder,
                           encoder_id=str(encoder_folder), fingerprint=fingerprint,
                           image_aspect=config.model.image_aspect)
    print(f"[demo] SEA labels: {folder} ({len(words)} words, {source})")
    return folder, summary


def _earlier_runs(out: Path, preset_name: str, seed: int) -> dict:
    """Objective runs of earlier `vlalign demo` calls into the same folder, same preset and seed: the
    comparison grows one `--objectives` call at a time (each run is ~18 min here)."""
    path = out / "metrics.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    kept = {name: run for name, run in earlier.items()
            if run.get("preset") == preset_name and run.get("seed") == seed and name in DEMO_OBJECTIVES}
    if kept:
        print(f"[demo] keeping earlier runs from {path}: {', '.join(kept)}")
    return kept


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {gpu}"


def run_demo(out: Path, quick: bool = False, seed: int = 0, objectives: list[str] | None = None) -> dict:
    from vlalign.data.shapes import generate_world, is_cached
    from vlalign.eval.report import render_report

    started = time.perf_counter()
    preset_name = "quick" if quick else "full"
    preset = PRESETS[preset_name]
    names = resolve_objectives(objectives)
    print(f"[demo] preset {'quick' if quick else 'full'}: {preset.n_train} train / {preset.n_test} test images, "
          f"objectives {names}; estimated {estimate_seconds(preset, names) / 60:.0f} min on a 2-core CPU "
          f"(+~30 s the first time, to convert the packaged SmolLM2 GGUF)")
    world = out / "world"
    if not is_cached(world, preset.n_train, preset.n_test, seed):
        generate_world(world, preset.n_train, preset.n_test, seed=seed)
    else:
        print(f"[demo] reusing the world in {world}")

    dual_encoder = _dual_encoder(world, out / "dual_encoder", preset, seed)

    test_sets = {name: _subset(json.loads((world / "test" / f"{name}.json").read_text()), preset.eval_per_set,
                               seed) for name in TEST_SETS}
    runs = _earlier_runs(out, preset_name, seed)
    stage1_config = load_config(CONFIGS / "quickstart-stage1.yaml")
    for name in names:
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        stage1_records = json.loads((world / "stage1.json").read_text())
        stage2_records = json.loads((world / "stage2.json").read_text())
        (run_dir / "stage1_train.json").write_text(json.dumps(_subset(stage1_records, preset.stage1_records, seed)))
        (run_dir / "stage2_train.json").write_text(json.dumps(_subset(stage2_records, preset.stage2_records, seed)))
        objectives, extra, mae_folder = DEMO_OBJECTIVES[name], {}, None
        if "sea" in objectives:
            labels, extra["sea_labels"] = _patch_labels(world, out, stage1_config, preset.sea_words)
            objectives = {**objectives, "sea": {**objectives["sea"], "labels": str(labels)}}
        if "xformer" in objectives:
            from vlalign.demo_query import demo_mae

            mae_folder, extra["mae"] = demo_mae(world, out, preset.mae_epochs, seed)
        runs[name] = run_objective(name, objectives, world, run_dir, preset, test_sets, mae_folder)
        runs[name].update(preset=preset_name, seed=seed, **extra)
        (out / "metrics.json").write_text(json.dumps(runs, indent=2))  # after each run: nothing lost on a stop

    manifest = json.loads((world / "manifest.json").read_text())
    info = {"preset": preset_name, "runtime_s": time.perf_counter() - started, "objectives_run": names,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "machine": _machine(),
            "vision_tower": stage1_config.model.vision_tower, "llm": stage1_config.model.llm,
            "visual_tokens": runs[names[0]]["visual_tokens"], "world_counts": manifest.get("counts", {}), "dual_encoder": dual_encoder}
    (out / "run.json").write_text(json.dumps(info, indent=2))
    (out / "report.md").write_text(render_report(runs, info))
    print(f"[demo] done in {info['runtime_s'] / 60:.1f} min; report: {out / 'report.md'}, "
          f"metrics: {out / 'metrics.json'}")
    return {"runs": runs, "info": info}
