"""One place for what chat, the API and the web UI share: render a conversation exactly as training did, and
generate from it with the text streamed as it comes, one generation at a time.

Rendering. A chat-format checkpoint learnt from `chat_text_and_spans` (vlalign.data.templates): the system
prompt of its config, then the turns, the image placeholder at the start of the first user turn
("<image>\\n" + text, as LLaVA's records and `prompt_ids` put it), rendered by its chat template. For turn k
the model is given that rendering up to the generation prompt of assistant turn k: the characters training
placed before the answer it supervised. With one user turn this is `prompt_ids` token for token, so the
greedy first answer equals `vlalign generate`'s. A plain-format (stage-1) checkpoint has no template: one
image and one prompt, no history.

Streaming. The text of all tokens so far is decoded again at every step and only its growth is handed on;
leading whitespace, trailing whitespace and a trailing incomplete UTF-8 character are held back until more
text follows, so the pieces add up to exactly `decode(tokens, skip_special_tokens=True).strip()`, the text
`vlalign generate` prints.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.llava_json import Turn
from vlalign.data.templates import prompt_ids
from vlalign.errors import VlalignError
from vlalign.train.load import load_checkpoint_model, resolve_checkpoint

__all__ = ["ChatModel", "Generation", "Prompt", "Reply", "RequestError", "Sampling", "Turn", "render_conversation"]


class RequestError(VlalignError):
    """A request the model cannot answer as asked; `param` names the part, `code` is a stable key."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy decoding (vlalign's default everywhere); above 0 it samples with top_p."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def generation_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:  # as vlalign.generate.answer passes them
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]  # placeholders already expanded to the visual-token count
    pixel_values: torch.Tensor | None  # [1, 3, S, S] or None for a text-only conversation


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached)


def render_conversation(tokenizer, fmt: str, turns: Sequence[Turn], image_token_id: int | None,
                        num_visual_tokens: int, system_prompt: str | None = None,
                        chat_template: str | None = None) -> list[int]:
    """Token ids a checkpoint answers the last (user) turn from; see the module docstring."""
    if not turns or turns[-1].role != "user":
        raise RequestError("the conversation must end with a user turn", param="messages")
    if any(turn.role != ("user" if i % 2 == 0 else "assistant") for i, turn in enumerate(turns)):
        raise RequestError("turns must alternate user, assistant, ..., user", param="messages")
    if fmt == "plain":
        if len(turns) > 1:
            raise RequestError("a plain-format (stage-1) checkpoint has no chat template: it answers one user "
                               "message about one image, without history", param="messages",
                               code="plain_format_single_turn")
        return prompt_ids(tokenizer, fmt, turns[0].text, image_token_id, num_visual_tokens)
    if len(turns) == 1:  # the very function `vlalign generate` uses
        return prompt_ids(tokenizer, fmt, turns[0].text, image_token_id, num_visual_tokens, system_prompt,
                          chat_template)
    image_token = tokenizer.convert_ids_to_tokens(image_token_id) if image_token_id is not None else ""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for index, turn in enumerate(turns):
        content = f"{image_token}\n{turn.text}" if index == 0 and image_token else turn.text
        messages.append({"role": turn.role, "content": content})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=chat_template)
    expanded = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        expanded.extend([token] * num_visual_tokens if token == image_token_id else [token])
    return expanded


class _TokenQueue(BaseStreamer):
    """transformers' streamer interface: the prompt first (empty here: generation starts from embeddings),
    then one [batch] tensor of new token ids per step, then end()."""

    def __init__(self):
        self.tokens: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1:  # a step's new token; the 2-D prompt is skipped
            self.tokens.put(value.tolist())

    def end(self) -> None:
        self.tokens.put(None)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _Deltas:
    """Decode-all-so-far, hand on only the growth (see the module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.emitted = tokenizer, [], ""

    def add(self, new_tokens: list[int]) -> str:
        self.tokens.extend(new_tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return ""
        return self._advance(text.rstrip())

    def finish(self, final_text: str) -> str:
        return self._advance(final_text)

    def _advance(self, visible: str) -> str:
        if len(visible) <= len(self.emitted) or not visible.startswith(self.emitted):
            return ""
        delta, self.emitted = visible[len(self.emitted):], visible
        return delta


class Generation:
    """Iterate for the text pieces as they are generated; `reply` is set once the iteration has ended.
    The model's lock is held from the first piece to the last: concurrent generations wait their turn."""

    def __init__(self, chat_model: "ChatModel", prompt: Prompt, sampling: Sampling):
        self.chat_model, self.prompt, self.sampling = chat_model, prompt, sampling
        self.reply: Reply | None = None
        self.cancel = threading.Event()

    def __iter__(self) -> Iterator[str]:
        with self.chat_model.lock:
            yield from self._run()

    def _run(self) -> Iterator[str]:
        model, streamer, outcome = self.chat_model.model, _TokenQueue(), {}
        worker = threading.Thread(target=self._generate, args=(streamer, outcome), daemon=True)
        worker.start()
        deltas = _Deltas(model.tokenizer)
        try:
            while (step := streamer.tokens.get()) is not None:
                if piece := deltas.add(step):
                    yield piece
        finally:
            self.cancel.set()  # a consumer that stops early (a closed connection) stops the generation too
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        new_tokens = outcome["tokens"][0].tolist()
        text = model.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        if rest := deltas.finish(text):
            yield rest
        self.reply = self.chat_model.make_reply(self.prompt, new_tokens, text)

    def _generate(self, streamer: _TokenQueue, outcome: dict) -> None:
        prompt, model = self.prompt, self.chat_model.model
        input_ids = torch.tensor([prompt.input_ids])
        try:
            if self.sampling.seed is not None:
                torch.manual_seed(self.sampling.seed)  # under the lock: no other generation draws meanwhile
            outcome["tokens"] = model.generate(
                input_ids, torch.ones_like(input_ids), prompt.pixel_values, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancel)]),
                **self.sampling.generation_kwargs())
        except BaseException as error:  # handed to the consumer's thread, which raises it
            outcome["error"] = error
        finally:
            streamer.end()


class ChatModel:
    """A loaded checkpoint with what answering needs: its config's template, image transform, context
    window, and the lock that keeps one generation at a time."""

    def __init__(self, model, config, name: str = "vlalign"):
        self.model, self.config, self.name = model, config, name
        self.lock = threading.Lock()
        self.transform = image_transform_for(model)
        self.chat_template = read_chat_template(config.data.chat_template)
        llm_config = model.language_model.config
        self.context_length = int(getattr(llm_config, "max_position_embeddings", None) or config.model.max_length)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | None = None, name: str | None = None) -> "ChatModel":
        folder = resolve_checkpoint(checkpoint)
        model, config = load_checkpoint_model(folder, device, merge_adapters=True)
        return cls(model, config, name or _default_name(Path(checkpoint)))

    @property
    def format(self) -> str:
        return self.config.data.format

    @property
    def needs_image(self) -> bool:
        """A plain-format (stage-1) checkpoint only ever saw an image followed by its caption."""
        return self.format == "plain"

    def image_pixels(self, image: Image.Image | str | Path) -> torch.Tensor:
        """[1, 3, S, S] from a PIL image or a file (read as `vlalign generate` reads it)."""
        image = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        return self.transform(image).unsqueeze(0)

    def prepare(self, turns: Sequence[Turn], image: Image.Image | str | Path | None, max_new_tokens: int,
                system_prompt: str | None = None) -> Prompt:
        """Check and lay out one request. `system_prompt` None: the checkpoint's own (data.system_prompt)."""
        if image is None and self.needs_image:
            raise RequestError("this checkpoint is plain-format (stage 1): it answers only about an image, and "
                               "the request has none", param="messages", code="image_required")
        pixel_values = self.image_pixels(image) if image is not None else None
        model = self.model
        ids = render_conversation(model.tokenizer, self.format, turns,
                                  model.image_token_id if image is not None else None, model.num_visual_tokens,
                                  self.config.data.system_prompt if system_prompt is None else system_prompt,
                                  self.chat_template)
        if len(ids) + max_new_tokens > self.context_length:
            raise RequestError(f"this model's maximum context length is {self.context_length} tokens; the "
                               f"request needs {len(ids) + max_new_tokens} ({len(ids)} in the messages, "
                               f"including {model.num_visual_tokens if image is not None else 0} visual tokens, "
                               f"and {max_new_tokens} for the answer)", param="messages",
                               code="context_length_exceeded")
        return Prompt(ids, pixel_values)

    def stream(self, prompt: Prompt, sampling: Sampling) -> Generation:
        return Generation(self, prompt, sampling)

    def answer(self, prompt: Prompt, sampling: Sampling) -> Reply:
        generation = self.stream(prompt, sampling)
        for _ in generation:
            pass
        return generation.reply

    def make_reply(self, prompt: Prompt, new_tokens: list[int], text: str) -> Reply:
        stops = _stop_ids(self.model)
        ends = next((index for index, token in enumerate(new_tokens) if token in stops), None)
        completion = len(new_tokens) if ends is None else ends + 1
        return Reply(text, len(prompt.input_ids), completion, "length" if ends is None else "stop")


def _stop_ids(model) -> set[int]:
    ids = model.language_model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


def _default_name(checkpoint: Path) -> str:
    """The model id the API reports: the run folder's name (a stage folder or its final/ checkpoint)."""
    path = checkpoint.resolve()
    return path.parent.name if path.name == "final" else path.name
