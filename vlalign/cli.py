"""`vlalign` command line: train | generate | info | data | train-dual-encoder | label-patches | pretrain-mae |
eval | export | chat | serve | demo.

The commands import their modules inside the handlers: torch, transformers and accelerate take seconds
to import, and `vlalign --help` or a config error should not wait for them. This is the one module that
imports inside functions for that reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlalign.arguments import number
from vlalign.errors import VlalignError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=2e-5 (repeatable)")


def cmd_train(args) -> None:
    from vlalign.config import load_config
    from vlalign.eval.during_training import training_eval_hook
    from vlalign.train.loop import train

    config = load_config(args.config, args.overrides)
    resume = True if args.resume == "latest" else args.resume
    hook = training_eval_hook(config)  # train.eval: benchmarks read and checked before training starts
    train(config, resume=resume, step_hooks=(hook,) if hook else (), overwrite=args.overwrite,
          allow_changes=args.allow_changes)


def cmd_info(args) -> None:
    import yaml

    from vlalign.config import load_config
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.objectives import build_objectives
    from vlalign.train.checks import check_config
    from vlalign.train.stages import apply_tune, format_parameter_table, parameter_table

    config = load_config(args.config, args.overrides)
    check_config(config)  # before the weights load
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    model = VisionLanguageModel.from_config(config.model)
    recipe = apply_tune(model, config.train.stage, config.train.tune)
    objectives = build_objectives(config.objectives, model)
    print(f"stage {config.train.stage} recipe: {recipe}")
    print(f"visual tokens per image: {model.num_visual_tokens} (tower grid {model.vision_tower.grid}, "
          f"image size {model.vision_tower.image_size})")
    print(format_parameter_table(parameter_table(model, {"objectives": objectives})))


def cmd_generate(args) -> None:
    from vlalign.config import load_config
    from vlalign.generate import answer, check_prompt, load_checkpoint_model, read_image, resolve_checkpoint

    # Inputs first: a bad image or prompt is reported before seconds (or minutes) of model loading.
    image = read_image(args.image) if args.image is not None else None
    check_prompt(args.prompt, load_config(resolve_checkpoint(args.checkpoint) / "config.yaml").model.image_token,
                 image is not None)
    model, config = load_checkpoint_model(args.checkpoint, merge_adapters=True)
    text = answer(model, config, image, args.prompt, max_new_tokens=args.max_new_tokens,
                  do_sample=args.sample, temperature=args.temperature, top_p=args.top_p)
    print(text)


def cmd_data_toy(args) -> None:
    from vlalign.data.toy import write_toy_dataset

    paths = write_toy_dataset(args.out, args.n, args.seed)
    print(f"wrote {paths['stage1']} and {paths['stage2']} (images under {paths['image_root']})")


def cmd_eval_alignment(args) -> None:
    from vlalign.eval.alignment_command import run_alignment

    result = run_alignment(args.checkpoint, args.data, args.out, image_root=args.image_root, limit=args.limit,
                           batch_size=args.batch_size, words_file=args.words, prompt=not args.no_prompt,
                           examples=args.examples)
    eos, token = result["eos"], result["token"]
    print(f"modality gap {eos['modality_gap']:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in eos.items() if "@" in k))
    print(f"gap score D {token['gap_score_D']:.3f}; TACS {token['tacs']:.3f}"
          + (f"; probe accuracy {token['probe']['accuracy']:.3f}" if "probe" in token else ""))
    print(f"wrote {Path(args.out) / 'alignment.json'}, {Path(args.out) / 'alignment.md'} and "
          f"{len(result['pictures'])} PNGs in {result['seconds']:.0f} s")


def cmd_eval_benchmarks(args) -> None:
    from vlalign.eval.benchmark_command import headline_line, run_benchmarks_command

    result = run_benchmarks_command(args.checkpoint, args.benchmark, args.data, args.out, image_root=args.image_root,
                                    split=args.split, limit=args.limit, scoring=args.scoring,
                                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                    blank=args.blank_images, device=args.device)
    if result is not None:  # None: a non-main process of a multi-process run
        print(headline_line(result))
        print(f"wrote {Path(args.out) / 'answers.jsonl'}, per_sample.jsonl and metrics.json")


def cmd_eval_score(args) -> None:
    from vlalign.eval.benchmark_command import headline_line, score_command

    result = score_command(args.benchmark, args.questions, args.predictions, args.out, scoring=args.scoring,
                           split=args.split)
    print(headline_line(result))
    if result["unmatched_predictions"]:
        print(f"note: {result['unmatched_predictions']} predictions name no question of the set, e.g. "
              f"{', '.join(result['unmatched_examples'])} (not scored)")
    print(f"wrote {Path(args.out) / 'metrics.json'} and per_sample.jsonl")


def cmd_demo(args) -> None:
    from vlalign.demo.run import run_demo

    names = [name.strip() for name in args.objectives.split(",") if name.strip()] if args.objectives else None
    run_demo(Path(args.out), quick=args.quick, seed=args.seed, objectives=names)


def _add_training_commands(commands) -> None:
    train = commands.add_parser("train", help="run one training stage from a config")
    _add_config_args(train)
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                       help="resume from the latest checkpoint in train.output_dir, or from CHECKPOINT")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in a train.output_dir that holds another run; its files are moved into "
                            "replaced-<time>/ there, not deleted")
    train.add_argument("--allow-changes", action="store_true",
                       help="with --resume: apply a changed learning-rate schedule (lr, vision_lr, warmup_ratio, "
                            "weight_decay, max_grad_norm) from the resumed step on; it is recorded")
    train.set_defaults(func=cmd_train)

    info = commands.add_parser("info", help="print the resolved config and parameter counts")
    _add_config_args(info)
    info.set_defaults(func=cmd_info)

    generate = commands.add_parser("generate", help="answer a prompt about an image from a checkpoint")
    generate.add_argument("--checkpoint", required=True)
    generate.add_argument("--image", default=None, help="image file (omit for a text-only prompt)")
    generate.add_argument("--prompt", default="")
    generate.add_argument("--max-new-tokens", type=number(int, minimum=1), default=64)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=number(float, above=0.0), default=0.7)
    generate.add_argument("--top-p", type=number(float, above=0.0, maximum=1.0), default=0.9)
    generate.set_defaults(func=cmd_generate)


def _add_data_commands(commands) -> None:
    from vlalign.data.shapes.cli import add_arguments as add_shapes_arguments, main_data_shapes
    from vlalign.dual_encoder.cli import add_arguments as add_dual_arguments, main_train_dual_encoder
    from vlalign.dual_encoder.label_cli import add_parser as add_label_patches_parser
    from vlalign.mae.cli import add_parser as add_pretrain_mae_parser

    data = commands.add_parser("data", help="generate data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    toy = data_commands.add_parser("toy", help="small coloured-shapes LLaVA-JSON set (stage 1 + stage 2)")
    toy.add_argument("--out", required=True)
    toy.add_argument("--n", type=number(int, minimum=1), default=64)
    toy.add_argument("--seed", type=number(int, minimum=0), default=0)
    toy.set_defaults(func=cmd_data_toy)
    shapes = data_commands.add_parser("shapes", help="the synthetic shapes world: train/test sets with ground truth")
    add_shapes_arguments(shapes)
    shapes.set_defaults(func=main_data_shapes)

    dual = commands.add_parser("train-dual-encoder",
                               help="train the demo's LiT-style dual encoder (EfficientNet-Lite0 + MiniLM heads)")
    add_dual_arguments(dual)
    dual.set_defaults(func=main_train_dual_encoder)
    add_label_patches_parser(commands)
    add_pretrain_mae_parser(commands)


def _add_eval_commands(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    eval_commands = evaluate.add_subparsers(dest="eval_command", required=True)
    alignment = eval_commands.add_parser(
        "alignment", help="modality gap, EOS retrieval, nearest-word probe, TACS and the papers' pictures")
    alignment.add_argument("--checkpoint", required=True, help="stage-1 or stage-2 checkpoint (or its stage folder)")
    alignment.add_argument("--data", required=True, help="held-out image-caption pairs, LLaVA JSON")
    alignment.add_argument("--out", required=True, help="folder for alignment.json, alignment.md and the PNGs")
    alignment.add_argument("--image-root", default=None,
                           help="folder the records' image paths are relative to (default: the data file's "
                                "folder or its parent, whichever holds the first image)")
    alignment.add_argument("--limit", type=number(int, minimum=1), default=1000, help="at most this many pairs")
    alignment.add_argument("--batch-size", type=number(int, minimum=1), default=16)
    alignment.add_argument("--words", default=None,
                           help="candidate words for the probe, one per line (default: the shapes world's "
                                "vocabulary when present, else the captions' words)")
    alignment.add_argument("--no-prompt", action="store_true",
                           help="EOS embeddings without Ak et al.'s 'This sentence: ... means:' prompts")
    alignment.add_argument("--examples", type=number(int, minimum=1), default=2, help="images drawn with recalled words / heatmaps")
    alignment.set_defaults(func=cmd_eval_alignment)
    _add_benchmark_commands(eval_commands)


def _add_benchmark_commands(eval_commands) -> None:
    from vlalign.eval.benchmarks.catalog import BENCHMARKS  # readers and scorers only: no torch stack

    def common(parser, data_flag: str, data_help: str) -> None:
        parser.add_argument(data_flag, required=True, help=data_help)
        parser.add_argument("--out", required=True, help="folder for metrics.json and per_sample.jsonl")
        parser.add_argument("--scoring", choices=("official", "lmms-eval"), default="official",
                            help="the benchmark's official scoring script, or lmms-eval's variant (README table)")
        parser.add_argument("--split", default=None, help="split of a `datasets` save with several")

    benchmarks = eval_commands.add_parser("benchmarks", help="answer a benchmark with a checkpoint and score it")
    benchmarks.add_argument("--checkpoint", required=True, help="stage checkpoint (or its stage folder)")
    benchmarks.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    common(benchmarks, "--data", "the benchmark's own files, or its `datasets` save / parquet")
    benchmarks.add_argument("--image-root", default=None, help="folder of the images (default: the data's folder)")
    benchmarks.add_argument("--limit", type=number(int, minimum=1), default=None, help="only the first N questions (as lmms-eval)")
    benchmarks.add_argument("--batch-size", type=number(int, minimum=1), default=8)
    benchmarks.add_argument("--max-new-tokens", type=number(int, minimum=1), default=None,
                            help="default: the benchmark's (LLaVA-1.5 / lmms-eval)")
    benchmarks.add_argument("--blank-images", action="store_true",
                            help="replace every image by a blank one (the text-only baseline)")
    benchmarks.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    benchmarks.set_defaults(func=cmd_eval_benchmarks)

    score = eval_commands.add_parser("score", help="score saved predictions (LLaVA answers .jsonl); no model")
    score.add_argument("benchmark", choices=list(BENCHMARKS))
    common(score, "--questions", "the benchmark's own files, or its `datasets` save / parquet")
    score.add_argument("--predictions", required=True, help="answers.jsonl: {question_id, text} per line")
    score.set_defaults(func=cmd_eval_score)


def _add_leaving_commands(commands) -> None:
    """Taking a model out: export to other tools' formats, chat in the terminal, serve a UI and an API."""
    from vlalign.export.cli import add_parser as add_export_parser
    from vlalign.serve.cli import add_parser as add_serve_parsers

    add_export_parser(commands)
    add_serve_parsers(commands)


def _add_demo_command(commands) -> None:
    from vlalign.demo.recipes import RECIPES  # data only: no training stack imported

    demo = commands.add_parser("demo", help="the offline end-to-end run with a report (README's main job)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes)")
    demo.add_argument("--objectives", default=None,
                      help="comma-separated objective runs to train and compare, or 'all' (default: generative); "
                           "runs of earlier calls into the same --out are kept in the report. Choices: "
                           + ", ".join(RECIPES))
    demo.add_argument("--seed", type=number(int, minimum=0), default=0)
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(commands)
    _add_data_commands(commands)
    _add_eval_commands(commands)
    _add_leaving_commands(commands)
    _add_demo_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VlalignError as error:
        print(f"vlalign: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
