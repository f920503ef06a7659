"""`vlalign chat` and `vlalign serve`. The handlers import their modules inside, as vlalign/cli.py does:
torch, transformers, gradio and FastAPI take seconds to import and `vlalign --help` should not wait.
vlalign/cli.py registers both with `add_parser`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlalign.arguments import number
from vlalign.errors import ConfigError


def _check_image(path: str | None) -> None:
    if path is not None and not Path(path).expanduser().is_file():
        raise ConfigError(f"--image {path} does not exist")


def cmd_chat(args) -> None:
    from transformers.utils import logging as transformers_logging

    from vlalign.serve.chat import run_chat
    from vlalign.serve.generation import ChatModel, Sampling

    transformers_logging.disable_progress_bar()  # the weight-loading bars would open the conversation

    _check_image(args.image)  # before the model loads
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError(f"--temperature must be >= 0 and --top-p in (0, 1]; got {args.temperature}, {args.top_p}")
    chat_model = ChatModel.load(args.checkpoint, args.device)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed)
    run_chat(chat_model, args.image, sampling)


def cmd_serve(args) -> None:
    from vlalign.serve.server import serve

    if args.words is not None and not Path(args.words).is_file():
        raise ConfigError(f"--words {args.words} does not exist")
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, words_file=args.words,
          max_new_tokens=args.max_new_tokens, name=args.model_name)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint (or its stage folder)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--max-new-tokens", type=number(int, minimum=1), default=64,
                        help="most tokens per answer (the API's default when a request sets no max_tokens)")


def add_parser(commands) -> None:
    chat = commands.add_parser("chat", help="talk to a checkpoint in the terminal (streamed, multi-turn)")
    _common(chat)
    chat.add_argument("--image", default=None, help="image to talk about (or /image PATH in the chat)")
    chat.add_argument("--temperature", type=number(float, minimum=0.0), default=0.0, help="0 (default): greedy decoding")
    chat.add_argument("--top-p", type=number(float, above=0.0, maximum=1.0), default=1.0, help="nucleus sampling, when --temperature > 0")
    chat.add_argument("--seed", type=number(int, minimum=0), default=None, help="seed for sampling")
    chat.set_defaults(func=cmd_chat)

    serve = commands.add_parser("serve", help="web UI + OpenAI-compatible API (/v1/chat/completions) for a checkpoint")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: this machine only")
    serve.add_argument("--port", type=number(int, minimum=0, maximum=65535), default=7860)
    serve.add_argument("--model-name", default=None,
                       help="the model id of the API (default: the checkpoint's run folder name)")
    serve.add_argument("--words", default=None,
                       help="candidate words for the recalled-words picture, one per line (default: the shapes "
                            "world's vocabulary when the checkpoint was trained on it, else the tokenizer's words)")
    serve.set_defaults(func=cmd_serve)

