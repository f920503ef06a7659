"""Benchmark: stage-1 step time of `generative` alone and with each contrastive objective added.

The demo's models (packaged EfficientNet-Lite0 stage 3 + SmolLM2-135M, 49 visual tokens, mlp2x_gelu with
2x2 pooling) on a small shapes world, batch 8 (the quickstart's). A step = forward + every objective +
backward (no optimizer update). The `eos_contrastive` caption cache is built before timing (warm, as in
training, where it is built once per dataset). Configurations run interleaved in one process (one step
each per round, the order rotating), median seconds per step:

  generative                    the baseline
  +eos_contrastive              image EOS read from the caption's own forward pass (what vlalign does)
  +eos_contrastive+prompt       the same with Ak et al.'s prompts (a few more tokens per sequence)
  +eos_contrastive(separate)    the alternative vlalign rejected: a second LLM pass over "<image>[EOS]"
                                rows for the image side, as a standalone embedding call would do
  +cg_contrastive               CG-VLM's pooled-token term
  +sea                          SEA's token-level term, patch labels cached (made first, with the packaged
                                dual encoder; their labelling throughput is reported too)

    python benchmarks/objective_speed.py [--rounds 8] [--threads N]

The last line of stdout is a JSON object with `generative_s`, `<name>_ratio` = step time / generative and
`labelling_patches_per_s` (SEA's offline step, word embedding excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign
from _training import training_setup  # noqa: E402

import torch  # noqa: E402

from vlalign.config import load_config  # noqa: E402
from vlalign.models import eos_embedding  # noqa: E402
from vlalign.models.vlm import VisionLanguageModel  # noqa: E402
from vlalign.losses.functional import info_nce  # noqa: E402
from vlalign.train.stages import apply_tune  # noqa: E402

CONFIGS = {
    "generative": {"generative": {}},
    "eos_contrastive": {"generative": {}, "eos_contrastive": {}},
    "eos_contrastive_prompt": {"generative": {}, "eos_contrastive": {"prompt": True}},
    "cg_contrastive": {"generative": {}, "cg_contrastive": {}},
    "sea": {"generative": {}, "sea": {}},  # labels: made by _sea_labels below (cached, as in training)
}


def _step(module, batch) -> float:
    started = time.perf_counter()
    total, _, _ = module(batch)
    total.backward()
    module.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _separate_pass_step(module, batch, text_rows) -> float:
    """The rejected alternative: the caption loss pass plus a second LLM pass for the image EOS rows."""
    started = time.perf_counter()
    total, _, _ = module(batch)
    image_side = eos_embedding.embed_images(module.model, batch.pixel_values, prompt=False)
    total = total + info_nce(image_side, text_rows, 1 / 0.07)
    total.backward()
    module.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _sea_labels(world: Path, out: Path, model_config) -> tuple[Path, dict]:
    """SEA's offline labels for the benchmark world, and the labelling throughput (patches/s, the word list
    embedded once beforehand and not counted). The dual encoder's heads are untrained and the words are
    the world's vocabulary: neither changes the step time (label features are looked up per sampled word)."""
    from vlalign.dual_encoder.packaged import PackagedDualEncoder
    from vlalign.dual_encoder.labeller import collect_images, label_images
    from vlalign.labels.words import resolve_words

    words, source = resolve_words("shapes", world)
    summary = label_images(PackagedDualEncoder.build(), collect_images(world / "stage1.json", world), words, out,
                           encoder_id="benchmark", fingerprint="untrained", image_aspect=model_config.image_aspect)
    run = summary["run"]
    return out, {"labelling_patches_per_s": run["patches_per_second"], "label_words": len(words),
                 "label_word_source": source, "word_embedding_s": run["word_embedding_seconds"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vlalign.data.shapes import generate_world

    work = Path(tempfile.mkdtemp(prefix="vlalign-objective-speed-"))
    generate_world(work / "world", n_train=max(16, args.batch), n_test=4, seed=0)
    config = load_config(REPO / "configs" / "quickstart-stage1.yaml",
                         [f"data.train_file={work / 'world' / 'stage1.json'}", f"data.image_root={work / 'world'}"])
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 1, config.train.tune)
    labels, labelling = _sea_labels(work / "world", work / "labels", config.model)
    extra = {"eos_contrastive": {"text_cache": str(work / "cache")}, "sea": {"labels": str(labels)}}
    setups = {name: training_setup(model, config, {k: {**v, **extra.get(k, {})} for k, v in objectives.items()}, args.batch)
              for name, objectives in CONFIGS.items()}
    text_rows = torch.from_numpy(
        setups["eos_contrastive"][0].objectives["eos_contrastive"].text_embeddings[setups["eos_contrastive"][1].extras["index"]]).float()
    runs = {name: (lambda m=module, b=batch: _step(m, b)) for name, (module, batch) in setups.items()}
    runs["eos_contrastive_separate"] = lambda: _separate_pass_step(*setups["generative"], text_rows)
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    names = list(runs)
    load_before = os.getloadavg()[0]
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            times[name].append(runs[name]())
    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = {name: int(batch.attention_mask.sum()) for name, (_, batch) in setups.items()}
    result = {"generative_s": medians["generative"],
              **{f"{name}_ratio": medians[name] / medians["generative"] for name in names if name != "generative"},
              **labelling, "tokens_per_batch": tokens, "batch": args.batch, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "load_avg_before": load_before,
              "load_avg_after": os.getloadavg()[0], "models": [config.model.vision_tower, config.model.llm]}
    for name in names:
        print(f"{name:28s} {medians[name]:.3f} s/step  ratio {medians[name] / medians['generative']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
