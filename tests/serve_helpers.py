"""Shared by the `vlalign chat` / `vlalign serve` tests: a tiny trained checkpoint, the command lines, a server
on a free port, and the answers the model must give, computed the independent way (vlalign.generate.answer
for one turn; training's own rendering, `chat_text_and_spans`, for later turns)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

MAX_NEW_TOKENS = 24


def tiny_checkpoint(tmp_path_factory, tiny_models, toy_data, stage: int = 2) -> Path:
    """A checkpoint of the tiny models, trained once per test session and shared by the serve tests.
    Stage 2 trains the whole LLM for 50 steps: after 1 step (or a LoRA run this short) the tiny random model
    answers every image question with newlines only, which stream as an empty answer and test nothing; after
    50 it says things like "The circle is purple." Stage 1 (plain format) takes one step."""
    from vlalign.config import load_config
    from vlalign.train.load import resolve_checkpoint
    from vlalign.train.loop import train

    out = tmp_path_factory.getbasetemp() / f"serve_checkpoint_stage{stage}"
    if (out / "final").is_dir():
        return resolve_checkpoint(out)
    chat = stage == 2
    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", f"model.llm={tiny_models['llm']}",
                                "model.max_length=128", f"data.train_file={toy_data[f'stage{stage}']}",
                                f"data.image_root={toy_data['image_root']}",
                                f"data.format={'chat' if chat else 'plain'}", f"train.stage={stage}",
                                f"train.output_dir={out}", "train.batch_size=4", "train.log_every=100",
                                *(["train.max_steps=50", "train.tune.llm=full", "train.lr=3e-3"] if chat
                                  else ["train.max_steps=1"])])
    return Path(train(config))


def vlalign_command() -> list[str]:
    return [sys.executable, "-m", "vlalign"]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
            "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`vlalign serve` in a subprocess on a free port, its output in a log file."""

    def __init__(self, checkpoint: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen(
            [*vlalign_command(), "serve", "--checkpoint", str(checkpoint), "--port", str(self.port), "--device", "cpu",
             "--max-new-tokens", str(MAX_NEW_TOKENS), *extra],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=subprocess_env())

    def wait_ready(self, timeout: float = 240) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vlalign serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"vlalign serve did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def greedy_answer(model, config, image: Path | None, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    from vlalign.generate import answer

    return answer(model, config, image, prompt, max_new_tokens=max_new_tokens)


def training_prefix_ids(model, config, image: Path | None, turns: list[tuple[str, str]],
                        system_prompt: str | None = None) -> list[int]:
    """Token ids training put before the answer to the last user turn of `turns` (role, text), image
    placeholders expanded: the conversation rendered by `chat_text_and_spans`, cut where the supervised
    span of that answer starts."""
    from vlalign.data.build import read_chat_template
    from vlalign.data.llava_json import Record, Turn
    from vlalign.data.templates import chat_text_and_spans

    image_token = model.tokenizer.convert_ids_to_tokens(model.image_token_id)
    record_turns = [Turn(role, (f"{image_token}\n{text}" if index == 0 and image is not None else text))
                    for index, (role, text) in enumerate(turns)]
    record_turns.append(Turn("assistant", "answer to be generated"))
    record = Record("conversation", image, tuple(record_turns), "test")
    text, spans = chat_text_and_spans(record, model.tokenizer, system_prompt or config.data.system_prompt,
                                      read_chat_template(config.data.chat_template))
    ids = model.tokenizer(text[:spans[-1][0]], add_special_tokens=False)["input_ids"]
    expanded = []
    for token in ids:
        expanded.extend([token] * model.num_visual_tokens if token == model.image_token_id else [token])
    return expanded


@torch.no_grad()
def greedy_from_ids(model, ids: list[int], image: Path | None) -> str:
    from vlalign.data.build import image_transform_for
    from vlalign.data.images import load_image

    input_ids = torch.tensor([ids])
    pixels = image_transform_for(model)(load_image(image)).unsqueeze(0) if image is not None else None
    tokens = model.generate(input_ids, torch.ones_like(input_ids), pixels, max_new_tokens=MAX_NEW_TOKENS,
                            do_sample=False)
    return model.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
