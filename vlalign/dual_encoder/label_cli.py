"""`vlalign label-patches`: arguments and entry point; the main CLI calls `add_parser(subcommands)`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.arguments import number


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "label-patches", help="SEA: label every image patch with its top-n words from a dual encoder (cached)")
    parser.add_argument("--data", default=None, metavar="DATA.json",
                        help="LLaVA JSON/JSONL set whose images to label (keys = the records' image strings)")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder the image paths are relative to (default: the JSON file's folder); "
                             "without --data, every image under it is labelled")
    parser.add_argument("--encoder", required=True,
                        help="a `vlalign train-dual-encoder` output folder, or an HF CLIP/SigLIP id or folder")
    parser.add_argument("--words", default=None,
                        help="word list: a file (one word per line), 'english' (Debian's wamerican, lowercase "
                             "alphabetic words), 'shapes' (the shapes world's vocabulary) or both joined by '+' "
                             "(default: english, plus shapes when --image-root is a shapes world)")
    parser.add_argument("--top-n", type=number(int, minimum=1), default=10, help="labels kept per patch (SEA: 10)")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder (resumed when it exists)")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=32)
    parser.add_argument("--shard-size", type=number(int, minimum=1), default=1024, help="images per cache shard (the resume unit)")
    parser.add_argument("--template", default="{}", help="text around each word, e.g. 'a photo of a {}.'")
    parser.add_argument("--image-aspect", default="pad", choices=["pad", "crop", "resize"],
                        help="must equal the VLM's model.image_aspect (default pad, as LLaVA-1.5)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.set_defaults(func=main_label_patches)
    return parser


def main_label_patches(args: argparse.Namespace) -> dict:
    # Imported here, not at the top: the main CLI builds this parser on every start (`vlalign --help`).
    import torch

    from vlalign.dual_encoder.labeller import PLOT_FILE, SUMMARY_FILE, collect_images, label_images, load_encoder
    from vlalign.labels.words import resolve_words

    items = collect_images(args.data, args.image_root)
    root = args.image_root or (Path(args.data).parent if args.data else None)
    words, words_source = resolve_words(args.words, root)
    encoder, fingerprint = load_encoder(args.encoder)
    encoder_id = str(Path(args.encoder).resolve()) if Path(args.encoder).exists() else args.encoder
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"[label-patches] {len(items)} images, {len(words)} words ({words_source}), grid "
          f"{encoder.patch_grid[0]}x{encoder.patch_grid[1]}, top-{args.top_n}, device {device}")
    summary = label_images(encoder, items, words, args.out, encoder_id=encoder_id, fingerprint=fingerprint,
                           top_n=args.top_n, batch_size=args.batch_size, shard_size=args.shard_size,
                           template=args.template, image_aspect=args.image_aspect, device=device)
    run, use = summary["run"], summary["utilisation"]
    speed = f", {run['patches_per_second']:.0f} patches/s" if run["patches_per_second"] else ""
    print(f"[label-patches] labelled {run['images_labelled']} images ({run['shards_reused']} shards reused) in "
          f"{run['seconds']:.1f} s{speed}")
    print(f"[label-patches] word list used: {use['any_label']:.1%} as any label, {use['top1']:.1%} as top-1; "
          f"mean label score {summary['label_scores']['mean']:.3f}; {summary['negative_share']:.1%} of top-n "
          f"candidates below 0; {summary['patches_without_label']} patches without a label")
    print(f"[label-patches] wrote {Path(args.out) / SUMMARY_FILE} and {Path(args.out) / PLOT_FILE}")
    return summary
