"""Benchmark: tokens per second of packed vs padded batches (length-grouped and random), and packed-vs-padded loss.

Three layouts of exactly the same samples, timed interleaved in one process (forward + loss + backward; the
optimizer step does not depend on the layout and is left out):

  grouped   padded, one row per sample, batches from vlalign's LengthGroupedBatchSampler (one megabatch of
            50 batches sorted by estimated length, as in training); K of its batches are drawn at random and
            their samples are the set every layout processes
  random    padded, the same samples in random batches of the same size
  packed    the random batches, padding-free (data.packing: rows of up to max_length, per-sample attention
            through model.attn_implementation=sdpa_varlen; --attn sdpa for transformers' block-diagonal mask)

Tokens per second count real tokens only (padding excluded), so the layouts are compared on the work that
matters. Sets:

  stage1    the demo's stage-1 captions (packaged EfficientNet-Lite0 + SmolLM2-135M, 49 visual tokens, frozen
            LLM, batch 8, max_length 256)
  stage2    the demo's stage-2 multi-turn instructions (LoRA r=16, batch 8, max_length 384)
  mix665k   a synthetic set with LLaVA-665K's length mix, LLM only (the tower's cost does not depend on
            padding): SmolLM2-135M's shape (576 wide, 9 heads / 3 KV heads, vocabulary 49152) with
            --mix-layers layers, random weights, every weight training, batch 8, max_length 2048. The mix
            (LLaVA-1.5's 665K records, text tokens as a Vicuna-style tokenizer counts them; image records
            carry CLIP-L/336's 576 visual tokens):
              47%  short-answer VQA (VQAv2, GQA, OKVQA, A-OKVQA, OCR-VQA): image, 1-10 turns of ~22 tokens
              20%  region-level (RefCOCO, Visual Genome): image, 3-15 turns of ~26 tokens
              24%  LLaVA-Instruct-158K: image, 1-5 turns, answers 40-220 tokens
               3%  TextCaps: image, one caption of 12-40 tokens
               6%  ShareGPT, text only: 2-12 turns, 200-1800 tokens in all (log-uniform)
            Supervised tokens are the answers, as in training.

max_abs_loss_diff: the largest |packed - padded| loss over the timed batches, fp32, same samples.

    python benchmarks/packing.py [--sets stage1,stage2,mix665k] [--batches 4] [--rounds 2] [--dtype bf16]

The last line of stdout is a JSON object with `packed_over_grouped` and `packed_over_random` per set (and for
the 665K-like mix at the top level) and `max_abs_loss_diff`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign
from _training import demo_training  # noqa: E402

import torch  # noqa: E402

from vlalign.data.dataset import Collator, LengthGroupedBatchSampler, Sample  # noqa: E402
from vlalign.data.packing import PER_SAMPLE_ATTENTION, packed_row_length  # noqa: E402
from vlalign.data.templates import IGNORE_INDEX  # noqa: E402
from vlalign.models.varlen_attention import NAME as VARLEN  # noqa: E402
from vlalign.objectives.generative import next_token_loss  # noqa: E402

MEGABATCH = 50  # LengthGroupedBatchSampler's default megabatch_factor


def layouts(samples: list, lengths: list[int], batch: int, count: int, pad_id: int, pack_length: int,
            seed: int) -> dict[str, list]:
    """The three layouts of the same samples: `count` batches drawn from one grouped megabatch."""
    rng = random.Random(seed)
    pool = rng.sample(range(len(samples)), min(len(samples), batch * MEGABATCH))
    grouped = LengthGroupedBatchSampler([lengths[i] for i in pool], batch, seed).batches()
    chosen = rng.sample([b for b in grouped if len(b) == batch], count)
    chosen_samples = [[samples[pool[i]] for i in b] for b in chosen]
    flat = [s for b in chosen_samples for s in b]
    rng.shuffle(flat)
    random_batches = [flat[i:i + batch] for i in range(0, len(flat), batch)]
    padded, packer = Collator(pad_id), Collator(pad_id, packing=True, pack_length=pack_length)
    return {"grouped": [padded(b) for b in chosen_samples], "random": [padded(b) for b in random_batches],
            "packed": [packer(b) for b in random_batches]}


def real_tokens(batches) -> int:
    return sum(int(b.attention_mask.sum()) for b in batches)


def computed_slots(batches) -> int:
    return sum(b.input_ids.numel() for b in batches)


def time_layouts(step, batches: dict[str, list], rounds: int, autocast) -> dict[str, float]:
    """Median tokens/s of each layout over `rounds`, interleaved, one warm-up pass first."""
    names = list(batches)
    for name in names:
        with autocast():
            step(batches[name][0])
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            for b in batches[name]:
                with autocast():
                    step(b)
            rates[name].append(real_tokens(batches[name]) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def loss_difference(loss, batches: dict[str, list]) -> float:
    """max |packed - padded| over the batches, fp32 (the random batches and their packing hold the same samples)."""
    with torch.no_grad():
        return max(abs(float(loss(p)) - float(loss(r))) for p, r in zip(batches["packed"], batches["random"]))


# ---------------------------------------------------------------------------------------------- demo sets

def demo_world(path: Path | None) -> Path:
    world = path or REPO / "runs" / "demo" / "world"
    if (world / "stage2.json").is_file():
        return world
    from vlalign.data.shapes import generate_world

    world = Path(tempfile.mkdtemp(prefix="vlalign-packing-")) / "world"
    print(f"[packing] no demo world at {path or REPO / 'runs/demo/world'}: generating one in {world}")
    generate_world(world, n_train=1500, n_test=8, seed=0)
    return world


def demo_set(stage: int, world: Path, attn: str, args) -> dict:
    # the tower runs on pixels here, as before the feature cache: the layouts, not the tower, are compared
    config, module, dataset = demo_training(stage, world, [f"model.attn_implementation={attn}",
                                                           "data.cache_vision_features=false"])
    model = module.model
    lengths = dataset.estimated_lengths()
    indices = list(range(len(dataset)))
    samples = _LazySamples(dataset, indices)
    batches = layouts(samples, lengths, config.train.batch_size, args.batches, model.tokenizer.pad_token_id,
                      packed_row_length(config.model), args.seed)

    def step(batch):
        total, _, _ = module(batch)
        total.backward()
        module.zero_grad(set_to_none=True)

    rates = time_layouts(step, batches, args.rounds, _autocast(args.dtype))
    diff = loss_difference(lambda b: module(b)[0], batches)
    return _summary(rates, batches, diff, {"max_length": config.model.max_length,
                                            "batch": config.train.batch_size, "records": len(dataset)})


class _LazySamples:
    """dataset[i] on first use: only the drawn samples are tokenized and their images decoded."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices, self.cache = dataset, indices, {}

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        if i not in self.cache:
            self.cache[i] = self.dataset[self.indices[i]]
        return self.cache[i]


# ------------------------------------------------------------------------------------------ 665K-like mix

MIX = [  # (share, has image, turns range, tokens per turn (min, max)) — see the module docstring
    (0.47, True, (1, 10), (16, 28)),
    (0.20, True, (3, 15), (18, 34)),
    (0.24, True, (1, 5), (50, 240)),
    (0.03, True, (1, 1), (20, 48)),
]
SHAREGPT = 0.06
VISUAL = 576
MAX_LENGTH = 2048


def mix_sample(rng: random.Random, index: int, vocab: int) -> Sample:
    """One synthetic record as token ids and labels: a 6-token turn header, the question, the answer; only the
    answers are supervised."""
    draw = rng.random()
    ids, labels = [1], [IGNORE_INDEX]
    if draw < 1 - SHAREGPT:
        for share, _, (lo, hi), (tmin, tmax) in MIX:
            if draw < share:
                break
            draw -= share
        ids += [3] * VISUAL
        labels += [IGNORE_INDEX] * VISUAL
        turns = [rng.randint(tmin, tmax) for _ in range(rng.randint(lo, hi))]
    else:
        total = int(math.exp(rng.uniform(math.log(200), math.log(1800))))
        count = rng.randint(2, 12)
        turns = [max(8, total // count)] * count
    for turn in turns:
        question = max(2, turn // 3) if turn < 60 else rng.randint(10, 40)
        answer = max(1, turn - question)
        header = 6
        ids += [rng.randrange(10, vocab) for _ in range(header + question + answer)]
        labels += [IGNORE_INDEX] * (header + question) + ids[-answer:]
        if len(ids) >= MAX_LENGTH:
            break
    ids, labels = ids[:MAX_LENGTH], labels[:MAX_LENGTH]
    return Sample(f"mix-{index}", ids, labels, None, False)


def mix_set(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlalign.models import varlen_attention

    varlen_attention.register()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.mix_layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=MAX_LENGTH,
                         tie_word_embeddings=True, rope_theta=100000.0)
    llm = LlamaForCausalLM(config)
    llm.config._attn_implementation = args.attn
    llm.train()
    rng = random.Random(args.seed)
    samples = [mix_sample(rng, i, config.vocab_size) for i in range(args.mix_records)]
    lengths = [len(s.input_ids) for s in samples]  # exact lengths: the grouping at its best
    batches = layouts(samples, lengths, 8, args.batches, 0, None if args.attn in PER_SAMPLE_ATTENTION else MAX_LENGTH,
                      args.seed)

    def loss(batch):
        hidden = llm.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           attention_mask=None if batch.packed else batch.attention_mask).last_hidden_state
        return next_token_loss(_Output(hidden, llm.lm_head), batch.labels)

    def step(batch):
        loss(batch).backward()
        llm.zero_grad(set_to_none=True)

    rates = time_layouts(step, batches, args.rounds, _autocast(args.dtype))
    diff = loss_difference(loss, batches)
    image_share = sum(3 in s.input_ids[:2] for s in samples) / len(samples)
    return _summary(rates, batches, diff, {"max_length": MAX_LENGTH, "batch": 8, "records": len(samples),
                                            "layers": args.mix_layers, "mean_length": statistics.mean(lengths),
                                            "median_length": statistics.median(lengths), "image_share": image_share})


class _Output:
    def __init__(self, hidden, head):
        self.hidden_states, self.head = hidden, head

    def logits_at(self, positions):
        return self.head(self.hidden_states[positions])


# -------------------------------------------------------------------------------------------------- main

def _autocast(dtype: str):
    if dtype == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _summary(rates: dict, batches: dict, diff: float, info: dict) -> dict:
    padding = {name: 1 - real_tokens(b) / computed_slots(b) for name, b in batches.items()}
    return {"tokens_per_s": rates, "packed_over_grouped": rates["packed"] / rates["grouped"],
            "packed_over_random": rates["packed"] / rates["random"], "grouped_over_random": rates["grouped"] / rates["random"],
            "padding_share": padding, "rows": {name: sum(x.input_ids.shape[0] for x in b) for name, b in batches.items()},
            "real_tokens": real_tokens(batches["packed"]), "max_abs_loss_diff": diff, **info}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="stage1,stage2,mix665k")
    parser.add_argument("--batches", type=int, default=4, help="batches of each layout per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32",
                        choices=["fp32", "bf16"], help="timing precision (the loss difference is always fp32)")
    parser.add_argument("--attn", default=VARLEN, help="attention for every layout (sdpa_varlen or sdpa)")
    parser.add_argument("--mix-layers", type=int, default=4)
    parser.add_argument("--mix-records", type=int, default=2000)
    parser.add_argument("--world", type=Path, default=None, help="the demo world (default runs/demo/world)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    results = {}
    world = demo_world(args.world) if {"stage1", "stage2"} & set(sets) else None
    for name in sets:
        started = time.perf_counter()
        results[name] = mix_set(args) if name == "mix665k" else demo_set(int(name[-1]), world, args.attn, args)
        r = results[name]
        print(f"{name}: tokens/s packed {r['tokens_per_s']['packed']:.0f}, grouped {r['tokens_per_s']['grouped']:.0f}, "
              f"random {r['tokens_per_s']['random']:.0f}; packed/grouped {r['packed_over_grouped']:.2f}, "
              f"packed/random {r['packed_over_random']:.2f}; padding grouped {r['padding_share']['grouped']:.1%} "
              f"random {r['padding_share']['random']:.1%} packed {r['padding_share']['packed']:.1%}; "
              f"|loss diff| {r['max_abs_loss_diff']:.2e} ({time.perf_counter() - started:.0f} s)")
    headline = results.get("mix665k") or next(iter(results.values()))
    out = {"packed_over_grouped": headline["packed_over_grouped"],
           "packed_over_random": headline["packed_over_random"],
           "max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in results.values()),
           "dtype": args.dtype, "attn": args.attn, "threads": torch.get_num_threads(), "sets": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
