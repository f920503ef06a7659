"""`vlalign pretrain-mae`: arguments and entry point; the main CLI calls `add_parser(subcommands)`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlalign.arguments import number


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "pretrain-mae", help="pretrain a small ViT-MAE (HF ViTMAEForPreTraining) on an image folder",
        description="Writes OUT/final/ (save_pretrained model + image processor + summary.json), "
                    "OUT/metrics.jsonl and, with --save-every, resumable OUT/checkpoint-<step>/ folders.")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="every .png/.jpg/.jpeg/.webp/.bmp under it, recursively, is a training image")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--image-size", type=number(int, minimum=1), default=224)
    parser.add_argument("--patch-size", type=number(int, minimum=1), default=16)
    parser.add_argument("--hidden-size", type=number(int, minimum=1), default=192, help="encoder width")
    parser.add_argument("--layers", type=number(int, minimum=1), default=4, help="encoder layers")
    parser.add_argument("--heads", type=number(int, minimum=1), default=3, help="encoder attention heads")
    parser.add_argument("--intermediate-size", type=number(int, minimum=1), default=768, help="encoder MLP width")
    parser.add_argument("--decoder-hidden-size", type=number(int, minimum=1), default=128)
    parser.add_argument("--decoder-layers", type=number(int, minimum=1), default=2)
    parser.add_argument("--epochs", type=number(int, minimum=1), default=10)
    parser.add_argument("--max-steps", type=number(int, minimum=1), default=None, help="optimizer steps; overrides --epochs")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=32)
    parser.add_argument("--lr", type=number(float, above=0.0), default=1e-3,
                        help="peak AdamW learning rate (cosine schedule, linear warmup)")
    parser.add_argument("--mask-ratio", type=number(float, above=0.0, maximum=0.99), default=0.75)
    parser.add_argument("--save-every", type=number(int, minimum=1), default=None, metavar="STEPS",
                        help="write a resumable checkpoint every STEPS steps (the last 2 are kept)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--num-workers", type=number(int, minimum=0), default=0, help="DataLoader worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=main_pretrain_mae)
    return parser


def main_pretrain_mae(args: argparse.Namespace) -> Path:
    # Imported here, not at the top: the main CLI builds this parser on every start (`vlalign --help`).
    from vlalign.mae.pretrain import pretrain_mae

    final = pretrain_mae(args.images, args.out, image_size=args.image_size, patch_size=args.patch_size,
                         hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                         intermediate_size=args.intermediate_size, decoder_hidden_size=args.decoder_hidden_size,
                         decoder_layers=args.decoder_layers, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio,
                         save_every=args.save_every, seed=args.seed, resume=args.resume,
                         progress=not args.no_progress, num_workers=args.num_workers)
    summary = json.loads((final / "summary.json").read_text())
    print(f"[pretrain-mae] {summary['images']} images, {summary['steps']} steps, loss {summary['first_loss']:.4f} "
          f"-> {summary['last_loss']:.4f}, {summary['images_per_s']} images/s; wrote {final}")
    return final
