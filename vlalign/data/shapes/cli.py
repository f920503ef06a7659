"""`vlalign data shapes`: generate (or reuse) a shapes world and print what it holds."""

from __future__ import annotations

import argparse
import time

from vlalign.arguments import number
from vlalign.data.shapes.generate import generate_world, is_cached


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the world into")
    parser.add_argument("--n-train", type=number(int, minimum=1), default=2000, help="training images (stage 1 and 2)")
    parser.add_argument("--n-test", type=number(int, minimum=1), default=200, help="test images (POPE/GQA/SQA/MME/captions)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0)
    parser.add_argument("--image-size", type=number(int, minimum=1), default=224, help="image side in pixels")
    parser.add_argument("--grids", type=number(int, minimum=1), nargs="+", default=[7, 14],
                        help="patch-label grids to record (7 = the 49 tokens of EfficientNet-Lite0 at 224 px)")
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching world exists")


def main_data_shapes(args: argparse.Namespace) -> dict | None:
    """Returns the manifest written, or None when a cached world was reused."""
    params = dict(n_train=args.n_train, n_test=args.n_test, seed=args.seed, image_size=args.image_size,
                  grids=tuple(args.grids))
    if not args.force and is_cached(args.out, **params):
        print(f"shapes world with these parameters already in {args.out} (use --force to regenerate)")
        return None
    started = time.perf_counter()
    manifest = generate_world(args.out, **params)
    seconds = time.perf_counter() - started
    width = max(len(name) for name in manifest["counts"])
    for name, count in manifest["counts"].items():
        print(f"  {name:<{width}}  {count}")
    forbidden = ", ".join(f"{color} {shape}" for color, shape in manifest["forbidden_combos"])
    print(f"forbidden (compositional) pairs: {forbidden}")
    print(f"wrote the shapes world to {args.out} in {seconds:.1f} s")
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    main_data_shapes(parser.parse_args())
