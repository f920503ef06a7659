"""The query-connector runs' pre-training (BLIP-2's Q-Former, X-Former) and what the report shows of it.

Where the other demo runs have one alignment stage, these have the paper's two before instruction tuning:
1. pre-training: the Q-Former (X-Former: + MAE branch) with ITC, ITM, ITG (+ reconstruction), no LLM;
2. LLM alignment: the final queries through one FC layer into the frozen LLM, generative loss, the former
   trains too; then the same stage-2 instruction tuning as every run.
The demo pretrains its own small MAE on the world's training images (no pretrained MAE ships on PyPI) and
reports zero-shot retrieval of the pre-trained model (X-Former Table 8 style) and the reconstruction curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from vlalign.demo.presets import PRETRAIN_BATCH, PRETRAIN_LR  # noqa: E402
from vlalign.demo.steps import stage_summary, train_stage  # noqa: E402
from vlalign.eval.alignment_run import read_pairs  # noqa: E402
from vlalign.eval.query_retrieval import query_retrieval  # noqa: E402
from vlalign.train.load import load_checkpoint_model  # noqa: E402


def reconstruction_curve(metrics_file: Path, png: Path) -> dict:
    """The pre-training terms per logged step; the reconstruction curve as a PNG when there is one."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    curves = {term: [(r["step"], r[term]) for r in rows if term in r]
              for term in ("itc", "itm", "itg", "reconstruction")}
    curves = {term: points for term, points in curves.items() if points}
    if "reconstruction" in curves:
        fig, ax = plt.subplots(figsize=(5, 3))
        steps, values = zip(*curves["reconstruction"])
        ax.plot(steps, values)
        ax.set_xlabel("pre-training step")
        ax.set_ylabel("masked-patch MSE (normalised pixels)")
        ax.set_title("X-Former reconstruction loss")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
    return {term: {"first": points[0][1], "last": points[-1][1], "points": points} for term, points in curves.items()}


def pretrain_query_former(objectives: dict, world: Path, run_dir: Path, common: dict, epochs: int,
                          retrieval_pairs: int) -> tuple[Path, dict]:
    """Stage "pre-training" with `objectives` ({"qformer": {}} or {"xformer": {}}); returns its final checkpoint
    (LLM alignment starts from it) and a report. `common`: the run's patch for every stage (its connector)."""
    final, seconds = train_stage("quickstart-stage1.yaml", [common, {
        # no LLM pass here, so nothing to pack: the captions go through the query former, one per image
        "data": {"train_file": str(run_dir / "stage1_train.json"), "packing": False},
        "train": {"output_dir": str(run_dir / "pretrain"), "epochs": epochs, "batch_size": PRETRAIN_BATCH,
                  "lr": PRETRAIN_LR},
        "objectives": objectives}])
    model, _ = load_checkpoint_model(final)
    pairs, root = read_pairs(world / "test" / "captions.json", world, retrieval_pairs)
    report = {"pretrain": stage_summary(run_dir / "pretrain", seconds),
              "retrieval": query_retrieval(model, pairs, root),
              "terms": reconstruction_curve(run_dir / "pretrain" / "metrics.jsonl",
                                            run_dir / "reconstruction_curve.png")}
    return final, report
