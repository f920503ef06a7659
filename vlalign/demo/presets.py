"""The demo's sizes (full / quick), its measured costs and the learning rates its recipes use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"
# demo set -> (benchmark, its files under the world's test/official, the world's own records of it)
# Generation cap for the demo's evaluation: the benchmarks' own lengths (128; ScienceQA 1024) cost minutes on
# this CPU whenever a weak model does not stop, and every scorer here reads the first words only.
DEMO_MAX_NEW_TOKENS = 32
GQA_FILE = "testdev_balanced_questions.json"
DEMO_SETS = {"pope": ("pope", "pope", "pope.json"), "gqa": ("gqa", f"gqa/{GQA_FILE}", "gqa.json"),
             "sqa": ("scienceqa", "scienceqa", "sqa.json"), "mme": ("mme", "mme", "mme.json"),
             "compositional_gqa": ("gqa", f"compositional_gqa/{GQA_FILE}", "compositional_gqa.json")}


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
ALIGN_LR = 3e-4  # qformer / xformer LLM alignment: a fresh FC layer on a pre-trained former (X-Former: 1e-4)
# Query connectors (BLIP-2 / X-Former) at demo scale.
NUM_QUERIES = 32  # BLIP-2 / X-Former
MAX_TEXT_LENGTH = 64  # BLIP-2 uses 32; the world's multi-object captions run longer, and cut text is lost text
PRETRAIN_LR = 1e-4  # X-Former: peak 1e-4, cosine
PRETRAIN_BATCH = 16  # ITC/ITM negatives come from the batch: as large as this CPU runs comfortably
MASK_RATIO = 0.5  # X-Former's MAE masking


def estimate_seconds(preset: Preset, recipes: list) -> float:
    """Wall time of a demo call on this machine, from the per-sample costs above."""
    per_run = (preset.stage1_records * preset.stage1_epochs * COST_PER_SAMPLE["stage1"]
               + preset.stage2_records * COST_PER_SAMPLE["stage2"]
               + 2 * len(DEMO_SETS) * preset.eval_per_set * COST_PER_SAMPLE["eval"]
               + 2 * preset.alignment_pairs * COST_PER_SAMPLE["alignment"] + 60)
    query_runs = sum("query_pretrain" in recipe.pre_steps for recipe in recipes)  # + pre-training (and the MAE once)
    query = (query_runs * preset.stage1_records * preset.query_pretrain_epochs * COST_PER_SAMPLE["query_pretrain"]
             + any("demo_mae" in recipe.pre_steps for recipe in recipes) * preset.n_train * preset.mae_epochs
             * COST_PER_SAMPLE["mae"])
    world_and_encoder = (preset.n_train + preset.n_test) * COST_PER_SAMPLE["image"] * 2 + 20
    return world_and_encoder + len(recipes) * per_run + query
