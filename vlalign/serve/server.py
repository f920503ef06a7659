"""`vlalign serve`: one ASGI app with the OpenAI-compatible API under /v1 and the Gradio web UI at /,
served by uvicorn, on 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI

from vlalign.serve.api import add_api_routes
from vlalign.serve.generation import ChatModel
from vlalign.serve.probe import RecalledWords
from vlalign.serve.ui import build_ui

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(chat_model: ChatModel, probe: RecalledWords, default_max_new_tokens: int = 64) -> FastAPI:
    """The API routes first, so that the UI mounted at / does not shadow them."""
    app = FastAPI(title="vlalign serve", docs_url=None, redoc_url=None, openapi_url=None)
    add_api_routes(app, chat_model, default_max_new_tokens)
    blocks = build_ui(chat_model, probe, default_max_new_tokens)
    blocks.queue(default_concurrency_limit=1)  # the model's lock orders generations; this orders UI events
    return gr.mount_gradio_app(app, blocks, path="/", ssr_mode=False, footer_links=["gradio", "settings"],
                               allowed_paths=[str(probe.out_dir)])


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          words_file: str | Path | None = None, max_new_tokens: int = 64, name: str | None = None) -> None:
    chat_model = ChatModel.load(checkpoint, device, name)
    probe = RecalledWords(chat_model, Path(tempfile.mkdtemp(prefix="vlalign-serve-")), words_file)
    app = build_app(chat_model, probe, max_new_tokens)
    shown = f"[{host}]" if ":" in host else host
    print(f"vlalign serve: model `{chat_model.name}` ({chat_model.format} format)\n"
          f"  web UI      http://{shown}:{port}/\n"
          f"  OpenAI API  http://{shown}:{port}/v1  (POST /v1/chat/completions, GET /v1/models)", flush=True)
    if host not in LOOPBACK:
        print(f"  note: bound to {host}, not the loopback address: anyone who can reach this machine can use "
              f"the model (the server has no authentication)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
