"""`vlalign export`: arguments and entry point; the main CLI calls `add_parser(commands)`."""

from __future__ import annotations

import argparse

FORMATS = ("llava", "remote-code")


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "export", help="write a checkpoint as a folder other tools load (transformers Llava: vLLM, lmms-eval)",
        description="llava: a transformers LlavaForConditionalGeneration folder (config.json, safetensors with LoRA "
                    "merged, tokenizer with <image>, chat template, processor, generation config) that "
                    "LlavaForConditionalGeneration/AutoProcessor.from_pretrained, `vllm serve OUT` and lmms-eval's "
                    "llava_hf load; for HF vision towers (CLIP, SigLIP) with the linear or mlp2x_gelu connector. "
                    "remote-code: a self-contained folder with its modeling code, for everything else.")
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint (or its stage folder)")
    parser.add_argument("--out", required=True,
                        help="folder to write; it is replaced as a whole, so new, empty or an earlier export")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: llava where the checkpoint fits it, else remote-code")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="dtype of the written weights (default: the language model's, as trained)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest safetensors file before the weights are split into shards (llava format)")
    parser.set_defaults(func=main_export)
    return parser


def chosen_format(args: argparse.Namespace) -> str:
    """--format, or llava when the checkpoint's config fits it and remote-code when not (saying why)."""
    if args.format is not None:
        return args.format
    # Imported here, not at the top: the main CLI builds this parser on every start (`vlalign --help`).
    from vlalign.config import load_config
    from vlalign.export.llava import config_refusal
    from vlalign.train.load import resolve_checkpoint

    refusal = config_refusal(load_config(resolve_checkpoint(args.checkpoint) / "config.yaml"))
    if refusal is None:
        return "llava"
    print(f"[export] {refusal}")
    return "remote-code"


def export_remote_code(args: argparse.Namespace) -> None:
    import time

    from vlalign.export.common import folder_size
    from vlalign.export.remote_code import export_remote_code as write_remote_code

    start = time.perf_counter()
    folder = write_remote_code(args.checkpoint, args.out, dtype=args.dtype)
    size, files = folder_size(folder)
    print(f"[export] wrote {folder} (remote-code, {args.dtype or 'dtype as trained'}): {files} files, "
          f"{size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s. Load it without vlalign: "
          f"AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True) and "
          f"AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)")


def export_llava_format(args: argparse.Namespace) -> None:
    from vlalign.export.llava import export_llava

    result = export_llava(args.checkpoint, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size)
    for note in result.notes:
        print(f"[export] note: {note}")
    merged = f", {result.merged_lora_layers} LoRA layers merged" if result.merged_lora_layers else ""
    print(f"[export] wrote {result.folder} (llava, {result.dtype}{merged}): {result.files} files, "
          f"{result.size_bytes / 1e6:.1f} MB in {result.seconds:.1f} s. Load it with "
          f"LlavaForConditionalGeneration.from_pretrained + AutoProcessor.from_pretrained, `vllm serve {result.folder}`"
          f" or lmms-eval --model llava_hf --model_args pretrained={result.folder}")


def main_export(args: argparse.Namespace) -> None:
    {"llava": export_llava_format, "remote-code": export_remote_code}[chosen_format(args)](args)
