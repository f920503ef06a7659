"""The demo's query-connector runs (seed 002): `qformer` (BLIP-2) and `xformer` (X-Former).

Where the other demo runs have one alignment stage, these have the paper's two before instruction tuning:
1. pre-training: the Q-Former (X-Former: + MAE branch) with ITC, ITM, ITG (+ reconstruction), no LLM;
2. LLM alignment: the final queries through one FC layer into the frozen LLM, generative loss, the former
   trains too; then the same stage-2 instruction tuning as every run.
The demo pretrains its own small MAE on the world's training images (no pretrained MAE ships on PyPI) and
reports zero-shot retrieval of the pre-trained model (seed 002 Table 8 style) and the reconstruction curve.
"""

from __future__ import annotations

import json
from pathlib import Path

QUERY_RUNS = {"qformer": "qformer", "xformer": "xformer"}  # demo run -> connector (= its pre-training objective)
NUM_QUERIES = 32  # BLIP-2 / X-Former
MAX_TEXT_LENGTH = 64  # BLIP-2 uses 32; the world's multi-object captions run longer, and cut text is lost text
PRETRAIN_LR = 1e-4  # seed 002: peak 1e-4, cosine
PRETRAIN_BATCH = 16  # ITC/ITM negatives come from the batch: as large as this CPU runs comfortably
MASK_RATIO = 0.5  # X-Former's MAE masking


def connector_overrides(name: str, mae_folder: Path | None) -> list[str]:
    options = {"num_queries": NUM_QUERIES, "max_text_length": MAX_TEXT_LENGTH}
    if QUERY_RUNS[name] == "xformer":
        options.update(mae=str(mae_folder), mask_ratio=MASK_RATIO)
    return [f"model.connector={QUERY_RUNS[name]}", f"model.connector_options={json.dumps(options)}"]


def demo_mae(world: Path, out: Path, epochs: int, seed: int) -> tuple[Path, dict]:
    """A small MAE pre-trained on the world's training images (reused when the settings match)."""
    from vlalign.demo import SETTINGS_FILE, saved_settings
    from vlalign.mae.pretrain import pretrain_mae

    folder = out / "mae"
    settings = {"epochs": epochs, "seed": seed, "world": json.loads((world / "manifest.json").read_text())["params"]}
    summary_file = folder / "final" / "summary.json"
    if summary_file.is_file() and saved_settings(folder, settings) is not None:
        print(f"[demo] reusing the MAE in {folder}")
        return folder / "final", {**json.loads(summary_file.read_text()), "reused": True}
    if folder.exists():
        import shutil

        shutil.rmtree(folder)  # other settings: its checkpoints must not be resumed
    final = pretrain_mae(world / "images" / "train", folder, epochs=epochs, seed=seed)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    return final, json.loads((final / "summary.json").read_text())


def reconstruction_curve(metrics_file: Path, png: Path) -> dict:
    """The pre-training terms per logged step; the reconstruction curve as a PNG when there is one."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    curves = {term: [(r["step"], r[term]) for r in rows if term in r]
              for term in ("itc", "itm", "itg", "reconstruction")}
    curves = {term: points for term, points in curves.items() if points}
    if "reconstruction" in curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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


def pretrain_query_former(name: str, world: Path, run_dir: Path, overrides: list[str], epochs: int,
                          retrieval_pairs: int) -> tuple[Path, dict]:
    """Stage "pre-training"; returns its final checkpoint (LLM alignment starts from it) and a report.
    `overrides`: the run's common settings and its connector (`connector_overrides`)."""
    from vlalign.demo import _stage_summary, _train_stage
    from vlalign.eval.alignment_run import read_pairs
    from vlalign.eval.query_retrieval import query_retrieval
    from vlalign.generate import load_checkpoint_model

    final, seconds = _train_stage("quickstart-stage1.yaml", [
        *overrides, f"data.train_file={run_dir / 'stage1_train.json'}", f"train.output_dir={run_dir / 'pretrain'}",
        f"train.epochs={epochs}", f"train.batch_size={PRETRAIN_BATCH}", f"train.lr={PRETRAIN_LR}",
        f"objectives={json.dumps({QUERY_RUNS[name]: {}})}"])
    model, _ = load_checkpoint_model(final)
    pairs, root = read_pairs(world / "test" / "captions.json", world, retrieval_pairs)
    report = {"pretrain": _stage_summary(run_dir / "pretrain", seconds),
              "retrieval": query_retrieval(model, pairs, root),
              "terms": reconstruction_curve(run_dir / "pretrain" / "metrics.jsonl",
                                            run_dir / "reconstruction_curve.png")}
    return final, report
