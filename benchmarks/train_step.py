"""Benchmark: one stage-1 training step, vlalign's VisionLanguageModel vs transformers' LlavaForConditionalGeneration.

Both models are built from the same tiny CLIPVisionConfig + LlamaConfig and hold the same weights, so they
compute the same function. Stage 1: only the projector (mlp2x_gelu) trains; the vision tower and the LLM
are frozen and in eval mode. A step is forward + loss + backward (no optimizer update):

  * vlalign: `model(input_ids, attention_mask, pixel_values)` then
    `vlalign.objectives.generative.next_token_loss(output, labels)` (logits only where a target exists);
  * transformers: `LlavaForConditionalGeneration(..., labels=labels)` (full [B, T, V] logits, then CE).

Before timing, the script asserts that both losses agree (fp32, rel tol 1e-4) and that the projector
gradients agree, so the two timings are of the same computation. Timing: warm-up steps, then interleaved
rounds (one step of each model per round, alternating which goes first), median seconds per step.

    python benchmarks/train_step.py                          # CPU, fp32 (default)
    python benchmarks/train_step.py --device cuda --dtype bf16

The last line of stdout is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import _env  # noqa: F401  (offline env + repo on sys.path, before torch and vlalign)

import torch  # noqa: E402

IGNORE = -100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: timed steps run under torch.autocast(bfloat16); the equivalence check is fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--caption-tokens", type=int, default=40, help="mean caption length; lengths vary +-6")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    # Model sizes. Defaults: CLIP 224 px / 16 px patches (14 x 14 = 196 visual tokens), 192 wide, 3 layers;
    # Llama 256 wide, 4 layers, 32000-token vocabulary (so the LM head weighs as in real models).
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--vision-hidden", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--llm-hidden", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--attn", default="sdpa", help="attention implementation for both models")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- models

def build_tokenizer():
    """A small byte-level BPE tokenizer (the LLM vocab is larger; its extra rows are plain embeddings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["a photo of a red circle next to a blue square on a white background",
              "two green triangles and one yellow star; the picture is small and bright",
              "user assistant system describe the image briefly"] * 10
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")


def configs(args, tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(image_size=args.image_size, patch_size=args.patch_size,
                              hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                              num_hidden_layers=args.vision_layers,
                              num_attention_heads=max(1, args.vision_hidden // 64))
    text = LlamaConfig(vocab_size=args.vocab, hidden_size=args.llm_hidden,
                       intermediate_size=int(2.6875 * args.llm_hidden),
                       num_hidden_layers=args.llm_layers, num_attention_heads=max(1, args.llm_hidden // 64),
                       num_key_value_heads=max(1, args.llm_hidden // 64), max_position_embeddings=2048,
                       tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return vision, text


def build_vlalign(vision_config, text_config, tokenizer, folder: Path, attn: str):
    """vlalign's model the way a user gets it: HF folders -> ModelConfig -> VisionLanguageModel.from_config."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from vlalign.config import ModelConfig
    from vlalign.models.vlm import VisionLanguageModel

    CLIPVisionModel(vision_config).save_pretrained(folder / "clip")
    LlamaForCausalLM(text_config).save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    config = ModelConfig(vision_tower=str(folder / "clip"), llm=str(folder / "llm"), vision_feature_layer=-2,
                         vision_feature_select="patch", connector="mlp2x_gelu", attn_implementation=attn)
    return VisionLanguageModel.from_config(config)


def build_hf(vision_config, text_config, image_token_id: int, num_visual_tokens: int, attn: str):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                         image_token_index=image_token_id, image_seq_length=num_visual_tokens,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", multimodal_projector_bias=True,
                         tie_word_embeddings=False)
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config)
    assert model.config.image_token_id == image_token_id
    return model


def hf_name(vlalign_name: str) -> str:
    for ours, theirs in (("vision_tower.model.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector."),
                         ("language_model.model.", "model.language_model."),
                         ("language_model.lm_head.", "lm_head.")):
        if vlalign_name.startswith(ours):
            return theirs + vlalign_name[len(ours):]
    raise KeyError(f"no HF counterpart for {vlalign_name}")


@torch.no_grad()
def copy_weights(hf, vl) -> int:
    """Every vlalign tensor <- its HF counterpart; every HF tensor used exactly once."""
    theirs = hf.state_dict()
    ours = vl.state_dict()
    used = set()
    for name, tensor in ours.items():
        source = theirs[hf_name(name)]
        if source.shape != tensor.shape:
            raise AssertionError(f"{name}: shape {tuple(tensor.shape)} vs HF {tuple(source.shape)}")
        tensor.copy_(source)
        used.add(hf_name(name))
    left = sorted(set(theirs) - used)
    if left:
        raise AssertionError(f"HF tensors without a vlalign counterpart: {left[:8]}")
    return len(ours)


def stage1(model, projector, frozen_in_eval):
    """Only the projector trains; frozen parts in eval mode (as vlalign's train/stages.py does)."""
    model.requires_grad_(False)
    projector.requires_grad_(True)
    model.train()
    for module in frozen_in_eval:
        module.eval()


# ------------------------------------------------------------------------------------------------ batch

def make_batch(args, num_visual, image_token_id, pad_id, vocab, device):
    g = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.caption_tokens - 6, args.caption_tokens + 7, (args.batch,), generator=g).tolist()
    total = num_visual + max(lengths)
    input_ids = torch.full((args.batch, total), pad_id, dtype=torch.long)
    labels = torch.full((args.batch, total), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((args.batch, total), dtype=torch.long)
    for row, n in enumerate(lengths):
        caption = torch.randint(0, vocab - 1, (n,), generator=g)
        caption[caption >= image_token_id] += 1  # never the <image> id
        input_ids[row, :num_visual] = image_token_id
        input_ids[row, num_visual:num_visual + n] = caption
        labels[row, num_visual:num_visual + n] = caption
        attention_mask[row, :num_visual + n] = 1
    pixel_values = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "pixel_values": pixel_values}
    return {k: v.to(device) for k, v in batch.items()}, lengths


# ------------------------------------------------------------------------------------------------- steps

def vlalign_loss(model, batch):
    from vlalign.objectives.generative import next_token_loss

    output = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    return next_token_loss(output, batch["labels"])


def hf_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 pixel_values=batch["pixel_values"], labels=batch["labels"], use_cache=False).loss


class Runner:
    def __init__(self, name, model, loss_fn, device, dtype):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.device, self.dtype = torch.device(device), dtype
        self.params = [p for p in model.parameters() if p.requires_grad]

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, batch, autocast=True) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        use_autocast = autocast and self.dtype is not None
        context = torch.autocast(self.device.type, dtype=self.dtype) if use_autocast else contextlib.nullcontext()
        with context:
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        return loss

    def timed_step(self, batch) -> float:
        self.sync()
        start = time.perf_counter()
        self.step(batch)
        self.sync()
        return time.perf_counter() - start

    def peak_step_memory(self, batch) -> dict:
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.step(batch)
        self.sync()
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"peak_mib": peak / 2**20, "step_extra_mib": (peak - before) / 2**20}


def check_equivalence(vl_run, hf_run, batch) -> dict:
    """fp32: same loss (rel 1e-4) and same projector gradients."""
    vl_loss = vl_run.step(batch, autocast=False).item()
    hf_loss_value = hf_run.step(batch, autocast=False).item()
    rel = abs(vl_loss - hf_loss_value) / abs(hf_loss_value)
    if rel > 1e-4:
        raise AssertionError(f"losses differ: vlalign {vl_loss:.8f} vs HF {hf_loss_value:.8f} (rel {rel:.2e})")
    ours = dict(vl_run.model.multi_modal_projector.named_parameters())
    theirs = dict(hf_run.model.model.multi_modal_projector.named_parameters())
    if set(ours) != set(theirs):
        raise AssertionError(f"projector parameters differ: {sorted(ours)} vs {sorted(theirs)}")
    # Exact on CPU in practice; GPU kernels may pick other reduction orders for the [K, D] x [D, V] head
    # (vlalign: K supervised rows; HF: all B*T rows), so allow a little more there.
    rtol = 1e-3 if vl_run.device.type == "cuda" else 1e-4
    worst = 0.0
    for name in sorted(ours):
        a, b = ours[name].grad, theirs[name].grad
        if a is None or b is None:
            raise AssertionError(f"projector {name}: missing gradient")
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 0.1 * scale + 1e-12,
                                   msg=f"projector {name} grads differ")
        worst = max(worst, (a - b).abs().max().item() / (scale or 1.0))
    trainable = {id(p) for p in vl_run.params}
    if trainable != {id(p) for p in ours.values()}:
        raise AssertionError("vlalign trains more than the projector")
    if {id(p) for p in hf_run.params} != {id(p) for p in theirs.values()}:
        raise AssertionError("HF Llava trains more than the projector")
    return {"loss_vlalign": vl_loss, "loss_hf": hf_loss_value, "loss_rel_diff": rel, "grad_max_rel_diff": worst}


# -------------------------------------------------------------------------------------------------- main

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    torch.manual_seed(args.seed)

    import transformers

    transformers.utils.logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    vision_config, text_config = configs(args, tokenizer)
    with tempfile.TemporaryDirectory(prefix="vlalign-bench-") as tmp:
        vl = build_vlalign(vision_config, text_config, tokenizer, Path(tmp), args.attn)
    num_visual = vl.num_visual_tokens
    vocab = vl.language_model.get_input_embeddings().weight.shape[0]
    hf = build_hf(vision_config, text_config, vl.image_token_id, num_visual, args.attn)
    if vocab != hf.config.text_config.vocab_size:
        raise AssertionError(f"vocab sizes differ: vlalign {vocab}, HF {hf.config.text_config.vocab_size}")
    copied = copy_weights(hf, vl)

    stage1(vl, vl.multi_modal_projector, [vl.vision_tower, vl.language_model])
    stage1(hf, hf.model.multi_modal_projector, [hf.model.vision_tower, hf.model.language_model, hf.lm_head])
    vl.to(device)
    hf.to(device)

    batch, lengths = make_batch(args, num_visual, vl.image_token_id, tokenizer.pad_token_id, vocab, device)
    vl_run = Runner("vlalign", vl, vlalign_loss, device, dtype)
    hf_run = Runner("hf_llava", hf, hf_loss, device, dtype)

    check = check_equivalence(vl_run, hf_run, batch)
    if dtype is not None:  # same computation in bf16 too, to bf16 precision
        a, b = vl_run.step(batch).item(), hf_run.step(batch).item()
        check.update(loss_vlalign_bf16=a, loss_hf_bf16=b)
        if abs(a - b) / abs(b) > 2e-2:
            raise AssertionError(f"bf16 losses differ beyond bf16 precision: {a} vs {b}")

    for _ in range(args.warmup):
        vl_run.timed_step(batch)
        hf_run.timed_step(batch)
    times = {"vlalign": [], "hf_llava": []}
    for round_index in range(args.rounds):
        order = (vl_run, hf_run) if round_index % 2 == 0 else (hf_run, vl_run)
        for run in order:
            times[run.name].append(run.timed_step(batch))

    memory = {}
    if device.type == "cuda":
        memory = {run.name: run.peak_step_memory(batch) for run in (vl_run, hf_run)}

    vl_s = statistics.median(times["vlalign"])
    hf_s = statistics.median(times["hf_llava"])
    seq_len = batch["input_ids"].shape[1]
    supervised = int((batch["labels"][:, 1:] != IGNORE).sum())
    result = {
        "vlalign_s": vl_s, "hf_llava_s": hf_s, "ratio": vl_s / hf_s,
        "vlalign_min_s": min(times["vlalign"]), "hf_llava_min_s": min(times["hf_llava"]),
        "batch": args.batch, "seq_len": seq_len, "visual_tokens": num_visual, "caption_tokens": lengths,
        "supervised_tokens": supervised, "vocab": vocab, "image_size": args.image_size,
        "patch_size": args.patch_size, "vision_hidden": args.vision_hidden, "vision_layers": args.vision_layers,
        "llm_hidden": args.llm_hidden, "llm_layers": args.llm_layers, "attn": args.attn,
        "trainable_params": sum(p.numel() for p in vl_run.params), "tensors_copied": copied,
        "threads": threads, "dtype": args.dtype, "device": str(device),
        "device_name": device_name(device),
        "warmup": args.warmup, "rounds": args.rounds,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        **check,
    }
    if memory:
        result["cuda_memory_mib"] = memory
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result.update(loadavg_1m_before=load_before, loadavg_1m_after=load_after,
                  total_wall_s=time.perf_counter() - started)

    print(f"stage-1 train step (forward + loss + backward, projector only), {args.dtype} on {device}, "
          f"{threads} threads")
    print(f"batch {args.batch} x {seq_len} tokens ({num_visual} visual + captions {min(lengths)}-{max(lengths)}), "
          f"{supervised} supervised, vocab {vocab}")
    print(f"equivalence (fp32): loss vlalign {check['loss_vlalign']:.6f} vs HF {check['loss_hf']:.6f} "
          f"(rel {check['loss_rel_diff']:.1e}); projector grads max rel diff {check['grad_max_rel_diff']:.1e}")
    print()
    header = f"{'model':<12}{'median s':>11}{'min s':>11}{'max s':>11}"
    print(header + (f"{'peak MiB':>11}{'step MiB':>11}" if memory else ""))
    for name in ("vlalign", "hf_llava"):
        row = f"{name:<12}{statistics.median(times[name]):>11.4f}{min(times[name]):>11.4f}{max(times[name]):>11.4f}"
        if memory:
            row += f"{memory[name]['peak_mib']:>11.1f}{memory[name]['step_extra_mib']:>11.1f}"
        print(row)
    print(f"ratio vlalign / hf_llava = {vl_s / hf_s:.3f}  "
          f"({args.rounds} interleaved rounds after {args.warmup} warm-up)")

    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
