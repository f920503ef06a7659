"""`vlalign train-dual-encoder`: arguments and entry point (the main CLI wires these two functions)."""

from __future__ import annotations

import argparse

from vlalign.arguments import number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="STAGE1.json",
                        help="LLaVA JSON caption set (one image per record, caption = first gpt turn)")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder the image paths are relative to (default: the JSON file's folder)")
    parser.add_argument("--test-data", default=None, metavar="CAPTIONS.json",
                        help="held-out caption set for the zero-shot retrieval report (same image root)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: heads.safetensors, config.json, report.json")
    parser.add_argument("--epochs", type=number(int, minimum=1), default=10)
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=64)
    parser.add_argument("--lr", type=number(float, above=0.0), default=1e-3)
    parser.add_argument("--seed", type=number(int, minimum=0), default=0)
    parser.add_argument("--embed-dim", type=number(int, minimum=1), default=256, help="shared embedding size of the heads")


def format_report(report: dict) -> str:
    lines = []
    for split in ("train", "test"):
        result = report.get(split)
        if not result:
            continue
        recall = "  ".join(f"{name} {value:.3f}" for name, value in result["retrieval"].items())
        chance = result["chance"].get("@1")
        by_caption = "  ".join(f"{name} {value:.3f}" for name, value in result["caption_retrieval"].items())
        lines.append(f"{split}: {result['images']} images, {result['distinct_captions']} distinct captions | "
                     f"{recall} | chance@1 {chance:.3f} | modality gap {result['modality_gap']:.3f}")
        lines.append(f"{' ' * len(split)}  over distinct captions: {by_caption}")
    losses = report["epoch_loss"]
    if losses:
        lines.append(f"loss {losses[0]:.3f} (epoch 1) -> {losses[-1]:.3f} (epoch {len(losses)}); "
                     f"logit scale {report['logit_scale']:.1f}")
    seconds = report["seconds"]
    lines.append("time: " + ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items()))
    return "\n".join(lines)


def main_train_dual_encoder(args: argparse.Namespace) -> dict:
    # Imported here, not at the top: the main CLI builds this parser on every start (`vlalign --help`).
    from vlalign.dual_encoder.train import train_dual_encoder

    report = train_dual_encoder(args.data, args.image_root, args.out, epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                test_json=args.test_data, embed_dim=args.embed_dim)
    print(format_report(report))
    print(f"saved to {args.out} (load with vlalign.dual_encoder.load_dual_encoder)")
    return report
