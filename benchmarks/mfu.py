"""Benchmark: model-FLOPs utilisation of the demo's training steps, and where a step's time goes.

In one process:
  (a) the machine's sustained matmul throughput, per dtype (fp32; bf16 where the CPU has it natively, e.g.
      AVX512-BF16 / AMX, or on a GPU), at the shapes the demo's LLM multiplies ([tokens, d] x [d, q/kv/o/up/down]
      and the LM head at the supervised tokens), and on one large square matmul. `peak_gflops` is the
      FLOP-weighted throughput at the demo's shapes in the demo's training dtype: what a step could reach if it
      did nothing but its matmuls.
  (b) the demo's stage-1 and stage-2 steps as the demo trains them (packaged EfficientNet-Lite0 stage 3 +
      SmolLM2-135M, mlp2x_gelu with 2x2 pooling, 49 visual tokens, batch 8, its packing / attention /
      cached-feature settings from configs/quickstart-stage*.yaml, bf16 autocast where native), with analytic
      FLOPs per step:
        forward of every part: tower (0 when its features are cached), connector, LLM (2 x weights x tokens
        + attention 4 x layers x d x length per token), LM head at the supervised positions only;
        backward only where gradients flow: stage 1 (frozen LLM) activation gradients through the LLM and
        the head (1 x their forward) and the connector's weight gradients; stage 2 (LoRA) the same through the
        frozen base weights plus LoRA's A/B weight and activation gradients and the connector's.
      Achieved FLOP/s = analytic FLOPs / step time; MFU = achieved / peak. A torch.profiler run splits a step
      into data loading, tower, connector, LLM forward, loss, backward and optimizer, and lists the ops that
      take the most time.

    python benchmarks/mfu.py [--steps 4] [--threads N]

The last line of stdout is a JSON object: stage1_mfu, stage2_mfu, peak_gflops, and the details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign
from _training import SingleProcess, demo_training  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from vlalign.config import load_config  # noqa: E402
from vlalign.data.dataset import Collator, LengthGroupedBatchSampler  # noqa: E402
from vlalign.data.packing import packed_row_length  # noqa: E402
from vlalign.data.templates import IGNORE_INDEX  # noqa: E402
from vlalign.objectives.generative import next_token_loss  # noqa: E402
from vlalign.train.fast_paths import store_frozen_linears_in  # noqa: E402
from vlalign.train.optim import build_optimizer  # noqa: E402

PARTS = ("data loading", "tower", "connector", "LLM forward", "loss", "backward", "optimizer")


# ------------------------------------------------------------------------------------------ matmul peak

def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, device: str, seconds: float = 0.4) -> float:
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * m * k * n * reps / (time.perf_counter() - started) / 1e9


def llm_shapes(config, tokens: int, supervised: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, how many per step) of the forward matmuls of one step."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    return [(tokens, d, d, 2 * layers), (tokens, d, kv, 2 * layers), (tokens, d, ff, 2 * layers),
            (tokens, ff, d, layers), (supervised, d, config.vocab_size, 1)]


def shape_throughput(shapes, dtype, device) -> tuple[float, dict]:
    """FLOP-weighted throughput over `shapes` (time-weighted harmonic mean) and each shape's GFLOP/s."""
    per_shape, flops, seconds = {}, 0.0, 0.0
    for m, k, n, count in shapes:
        rate = matmul_gflops(m, k, n, dtype, device)
        per_shape[f"{m}x{k}x{n}"] = rate
        flops += 2 * m * k * n * count
        seconds += 2 * m * k * n * count / (rate * 1e9)
    return flops / seconds / 1e9, per_shape


# ------------------------------------------------------------------------------------------ analytic FLOPs

def llm_forward_flops(config, sample_lengths: list[int], supervised: int) -> tuple[float, float, float]:
    """(weights, attention, LM head) forward FLOPs: 2 x weights x tokens for the layers, 4 x layers x d x length
    per token for scores and mixing (PaLM's accounting), 2 x d x vocab per supervised token."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_token = 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * ff)
    tokens = sum(sample_lengths)
    attention = sum(4 * layers * d * length * length for length in sample_lengths)
    return per_token * tokens, attention, 2 * d * config.vocab_size * supervised


def lora_flops(language_model, tokens: int) -> float:
    """Forward FLOPs of every LoRA adapter (A: in -> r, B: r -> out) over `tokens`."""
    total = 0
    for module in language_model.modules():
        a = getattr(module, "lora_A", None)
        if a is not None and "default" in a:
            total += 2 * tokens * (a["default"].in_features * a["default"].out_features
                                   + module.lora_B["default"].in_features * module.lora_B["default"].out_features)
    return total


def module_flops(module, *inputs) -> float:
    """Forward FLOPs of one call, counted per op (convolutions, matmuls) by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return float(counter.get_total_flops())


def step_flops(model, batch, stage: int, cached: bool) -> dict[str, float]:
    config = model.language_model.config
    lengths = _sample_lengths(batch)
    supervised = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    weights, attention, head = llm_forward_flops(config, lengths, supervised)
    images = batch.pixel_values if batch.pixel_values is not None else batch.vision_features
    tower = 0.0 if cached or images is None else module_flops(model.vision_tower, batch.pixel_values)
    features = (batch.vision_features.float() if cached else model.vision_tower(batch.pixel_values).detach()) \
        if images is not None else None
    connector = module_flops(lambda x: model.multi_modal_projector(x, model.vision_tower.grid), features) \
        if features is not None else 0.0
    lora = lora_flops(model.language_model, sum(lengths)) if stage == 2 else 0.0
    forward = tower + connector + weights + attention + head + lora
    # backward: activation gradients through the frozen LLM and head (1x), attention (2x: dQ, dK, dV), LoRA
    # (2x: weights and activations), the connector (2x, its input gradient included: it is small)
    backward = weights + 2 * attention + head + 2 * lora + 2 * connector
    return {"tower": tower, "connector": connector, "llm_weights": weights, "attention": attention, "lm_head": head,
            "lora": lora, "forward": forward, "backward": backward, "total": forward + backward,
            "tokens": sum(lengths), "supervised": supervised}


def _sample_lengths(batch) -> list[int]:
    owner = batch.token_samples()
    return [int((owner == i).sum()) for i in range(len(batch))]


# ------------------------------------------------------------------------------------------ the demo step

def demo_stage(stage: int, world: Path, args):
    config, module, dataset = demo_training(stage, world, [f"data.vision_feature_cache={args.cache}"])
    model = module.model
    if SingleProcess.mixed_precision == "bf16":
        store_frozen_linears_in(model, torch.bfloat16)  # as the training loop does under bf16 autocast
    sampler = LengthGroupedBatchSampler(dataset.estimated_lengths(), config.train.batch_size, args.seed,
                                        config.data.group_by_length)
    batches = sampler.batches()[1:]  # not the deliberately longest first batch
    collate = Collator(model.tokenizer.pad_token_id, packing=config.data.packing,
                       pack_length=packed_row_length(config.model))
    optimizer = build_optimizer(model, config.train)
    return config, model, dataset, batches, collate, optimizer


def one_step(model, dataset, indices, collate, optimizer, autocast) -> object:
    with record_function("data loading"):
        batch = collate([dataset[i] for i in indices])
    with autocast():
        with record_function("tower"):
            if batch.vision_features is not None:
                vision = batch.vision_features.float()
            elif batch.pixel_values is not None:
                with torch.no_grad():
                    vision = model.vision_tower(batch.pixel_values)
            else:
                vision = None
        with record_function("connector"):
            visual = model.multi_modal_projector(vision, model.vision_tower.grid) if vision is not None else None
        with record_function("LLM forward"):
            embeds, _, _ = model.embed(batch.input_ids, visual, visual, batch.visual_keep)
            hidden = model.language_model.get_decoder()(
                inputs_embeds=embeds, attention_mask=None if batch.packed else batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False).last_hidden_state
        with record_function("loss"):
            loss = next_token_loss(_Hidden(hidden, model.language_model.get_output_embeddings()), batch.labels)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return batch


class _Hidden:
    def __init__(self, hidden, head):
        self.hidden_states, self.head = hidden, head

    def logits_at(self, positions):
        return self.head(self.hidden_states[positions])


def measure_stage(stage: int, world: Path, args, autocast) -> dict:
    config, model, dataset, batches, collate, optimizer = demo_stage(stage, world, args)
    cached = config.data.cache_vision_features
    one_step(model, dataset, batches[0], collate, optimizer, autocast)  # warm-up
    times, flops = [], []
    for indices in batches[1:1 + args.steps]:
        started = time.perf_counter()
        batch = one_step(model, dataset, indices, collate, optimizer, autocast)
        times.append(time.perf_counter() - started)
        with autocast():
            flops.append(step_flops(model, batch, stage, cached))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for indices in batches[1 + args.steps:1 + 2 * args.steps]:
            one_step(model, dataset, indices, collate, optimizer, autocast)
    events = prof.key_averages()
    parts = {e.key: e.cpu_time_total / 1e6 / args.steps for e in events if e.key in PARTS}
    top = sorted((e for e in events if e.key not in PARTS and not e.key.startswith("ProfilerStep")),
                 key=lambda e: -e.self_cpu_time_total)[:10]
    step_s = statistics.median(times)
    total = statistics.median(f["total"] for f in flops)
    return {"step_s": step_s, "flops_per_step": total, "achieved_gflops": total / step_s / 1e9,
            "flops": {k: statistics.median(f[k] for f in flops) for k in flops[0]},
            "parts_s": {part: parts.get(part, 0.0) for part in PARTS},
            "top_ops_self_s": {e.key: e.self_cpu_time_total / 1e6 / args.steps for e in top},
            "settings": {"packing": config.data.packing, "attn": config.model.attn_implementation,
                         "cache_vision_features": cached, "visual_token_drop": config.train.visual_token_drop,
                         "batch": config.train.batch_size}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage (and as many profiled)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "demo" / "world")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "vlalign" / "vision_features"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.world / "stage2.json").is_file():
        from vlalign.data.shapes import generate_world

        generate_world(args.world, n_train=1500, n_test=8, seed=0)
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    stages = {stage: measure_stage(stage, args.world, args, autocast) for stage in (1, 2)}
    llm_config = load_config(REPO / "configs" / "quickstart-stage1.yaml").model
    from vlalign.models.llm import load_llm

    language_model, _, _ = load_llm(llm_config.llm, llm_config.image_token)
    peaks = {}
    for name, stage in stages.items():
        shapes = llm_shapes(language_model.config, int(stage["flops"]["tokens"]), int(stage["flops"]["supervised"]))
        peaks[name] = {dtype_name: shape_throughput(shapes, dtype, "cpu")
                       for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                       if dtype == torch.float32 or bf16}
    square = {name: matmul_gflops(2048, 2048, 2048, dtype, "cpu")
              for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if dtype == torch.float32 or bf16}
    train_name = "bf16" if bf16 else "fp32"
    out = {}
    for name, stage in stages.items():
        peak = peaks[name][train_name][0]
        stage["peak_gflops_at_shapes"] = {k: v[0] for k, v in peaks[name].items()}
        stage["matmul_gflops_per_shape"] = {k: v[1] for k, v in peaks[name].items()}
        stage["mfu"] = stage["achieved_gflops"] / peak
        out[f"stage{name}_mfu"] = stage["mfu"]
        print(f"stage {name}: {stage['step_s']:.3f} s/step, {stage['flops_per_step'] / 1e9:.1f} GFLOP/step, "
              f"achieved {stage['achieved_gflops']:.1f} GFLOP/s, peak at its shapes {peak:.1f} ({train_name}), "
              f"MFU {stage['mfu']:.1%}")
        print("   parts (s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in stage["parts_s"].items()))
        print("   top ops (self s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in stage["top_ops_self_s"].items()))
    out["peak_gflops"] = peaks[1][train_name][0]
    out.update({"train_dtype": train_name, "square_2048_gflops": square, "threads": torch.get_num_threads(),
                "stages": stages})
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
