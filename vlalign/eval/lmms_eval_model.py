"""lmms-eval's model `vlalign`: a vlalign checkpoint answering lmms-eval's requests.

    lmms-eval --model vlalign --model_args checkpoint=runs/demo/generative/stage2 --tasks pope \\
        --batch_size 8 --log_samples --output_path results

Only lmms-eval imports this module (it finds the class through the `lmms_eval.models` entry point declared
in pyproject.toml, see lmms_eval_manifest.py), so lmms_eval is imported at the top; no other vlalign module
imports this one, and vlalign works without lmms-eval installed.

Prompts are laid out as vlalign's own evaluation lays them out (`vlalign.data.templates.prompt_ids`):
lmms-eval's context string (the question with the task's pre/post prompt) is the user turn, the image goes
first (an `<image>` tag inside the context is dropped: vlalign models read one image, placed as in
training), and the checkpoint's data format, chat template and system prompt apply. Greedy requests go
through `vlalign.eval.answering.answer_batch` (sampling and beam search too), the code `vlalign eval
benchmarks` answers with, so both give the same text for the same image and prompt. Stop strings (`until`) cut the answer after generation
(lm-eval's convention; answer_batch has no stop criterion, so generation runs to EOS or max_new_tokens).

One process: lmms-eval's data-parallel launch (accelerate, several ranks) is not supported; use one device.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from vlalign.data.build import image_transform_for
from vlalign.eval.answering import answer_batch, prompt_row, stacked_pixels
from vlalign.train.load import load_checkpoint_model

# lmms-eval's tasks nearly always set max_new_tokens; this is for the few that do not.
DEFAULT_MAX_NEW_TOKENS = 256
GENERATION_KEYS = frozenset({"until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams"})


@dataclass(frozen=True)
class GenerationOptions:
    """A task's `generation_kwargs`, read the way lmms-eval's own models read them."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    until: tuple[str, ...] = ()
    sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: dict) -> "GenerationOptions":
        """Greedy unless sampling is asked for with a temperature above 0: `temperature: 0` is greedy whatever
        `do_sample` says, `do_sample: false` is greedy whatever the temperature, and a temperature above 0
        without `do_sample` samples (lmms-eval's llava models: do_sample = temperature > 0)."""
        _warn_ignored(tuple(sorted(set(gen_kwargs) - GENERATION_KEYS)))
        until = gen_kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        do_sample, temperature = gen_kwargs.get("do_sample"), gen_kwargs.get("temperature")
        if temperature is None:
            temperature = 1.0 if do_sample else 0.0
        sample = float(temperature) > 0 and (do_sample is None or bool(do_sample))
        max_new_tokens = gen_kwargs.get("max_new_tokens")
        return cls(max_new_tokens=int(max_new_tokens if max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS),
                   until=tuple(stop for stop in until if stop), sample=sample, temperature=float(temperature),
                   top_p=float(gen_kwargs.get("top_p") or 1.0), num_beams=int(gen_kwargs.get("num_beams") or 1))


@functools.cache
def _warn_ignored(keys: tuple[str, ...]) -> None:
    """Once per set of keys (a task's kwargs come with every batch), e.g. llava's `image_aspect_ratio`."""
    if keys:
        logger.warning(f"vlalign: ignoring generation_kwargs {list(keys)}")


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """The text before the first stop string (each split keeps what precedes it, so the earliest one wins)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def generate_texts(model, config, questions: list[str], images: list[torch.Tensor | None],
                   options: GenerationOptions) -> list[str]:
    """Answers for one batch through answer_batch (greedy, sampling or beam search), cut at the stop strings."""
    settings = {"do_sample": options.sample, "num_beams": options.num_beams}
    if options.sample:
        settings.update(temperature=options.temperature, top_p=options.top_p)
    texts = answer_batch(model, config, questions, images, max_new_tokens=options.max_new_tokens, **settings)
    return [cut_at_stop(text, options.until) for text in texts]


@torch.no_grad()
def continuation_logprobs(model, contexts: list[list[int]], continuations: list[list[int]],
                          images: list[torch.Tensor | None]) -> list[tuple[float, bool]]:
    """(sum of log p(continuation token | everything before it), whether every continuation token is the
    argmax there) per row. Rows are right-padded so that positions count from 0 as in training."""
    rows = [context + continuation for context, continuation in zip(contexts, continuations)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), model.tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, :len(row)] = torch.tensor(row)
        attention_mask[index, :len(row)] = 1
    device = model.language_model.get_input_embeddings().weight.device
    pixel_values = stacked_pixels(images)
    output = model(input_ids.to(device), attention_mask.to(device),
                   pixel_values.to(device) if pixel_values is not None else None)
    results = []
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        if not continuation:
            results.append((0.0, True))
            continue
        # the logits at position t predict token t + 1: the continuation is predicted from len(context) - 1 on
        start = len(context) - 1
        logits = output.lm_head(output.hidden_states[index, start:start + len(continuation)]).float()
        target = torch.tensor(continuation, device=logits.device)
        logprob = logits.log_softmax(-1).gather(-1, target[:, None]).sum()
        results.append((float(logprob), bool((logits.argmax(-1) == target).all())))
    return results


def batches_by_key(keys: list, size: int) -> list[list[int]]:
    """Indices grouped by key (first appearance first, document order inside a group), in chunks of `size`."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [indices[start:start + size] for indices in groups.values() for start in range(0, len(indices), size)]


def _gen_kwargs_key(gen_kwargs: dict) -> str:
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


def _parse_batch_size(value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"vlalign: --batch_size must be a whole number, got {value!r} (no 'auto')") from None
    if size < 1:
        raise ValueError(f"vlalign: --batch_size must be at least 1, got {size}")
    return size


class VlalignLMM(lmms):
    """`--model vlalign --model_args checkpoint=DIR[,device=cuda:0]`: DIR is a stage folder (its final/) or
    a checkpoint folder. `--batch_size N` answers N requests per forward pass; `--device` picks the device
    (default: the GPU when there is one)."""

    def __init__(self, checkpoint: str, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"vlalign: unknown model_args {sorted(unknown)}; it takes checkpoint and device")
        self.batch_size = _parse_batch_size(batch_size)  # max_batch_size only bounds 'auto', which is not taken
        self.model, self.config = load_checkpoint_model(checkpoint, device=device or None, merge_adapters=True)
        self._transform = image_transform_for(self.model)
        self._image_tag = self.model.tokenizer.convert_ids_to_tokens(self.model.image_token_id)

    @property
    def device(self) -> torch.device:
        return self.model.language_model.get_input_embeddings().weight.device

    def _image(self, visuals, where: str) -> torch.Tensor | None:
        visuals = [visual for visual in (visuals or []) if visual is not None]
        if len(visuals) > 1:
            raise ValueError(f"vlalign: {where} has {len(visuals)} images; a vlalign model reads one per question")
        if visuals and not isinstance(visuals[0], Image.Image):
            raise ValueError(f"vlalign: {where} gives a {type(visuals[0]).__name__}, not an image (video and "
                             f"audio are not supported)")
        return self._transform(visuals[0]) if visuals else None

    def _question(self, context: str) -> str:
        """The user turn: the context without `<image>` tags (prompt_ids puts the image first)."""
        return re.sub(re.escape(self._image_tag) + r"\n?", "", context) if self._image_tag in context else context

    def _request_input(self, context: str, doc_to_visual, doc_id, task: str, split: str):
        if doc_to_visual is None:  # a text-only request
            return self._question(context), None
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return self._question(context), self._image(visuals, f"{task}/{split} document {doc_id}")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """args per request: (context, gen_kwargs, doc_to_visual, doc_id, task, split). Requests with equal
        gen_kwargs are batched together."""
        answers: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), desc="vlalign answering", disable=self.rank != 0)
        for batch in batches_by_key([_gen_kwargs_key(r.args[1]) for r in requests], self.batch_size):
            options = GenerationOptions.from_gen_kwargs(requests[batch[0]].args[1])
            inputs = [self._request_input(context, visual, doc_id, task, split)
                      for context, _, visual, doc_id, task, split in (requests[i].args for i in batch)]
            texts = generate_texts(self.model, self.config, [q for q, _ in inputs], [im for _, im in inputs], options)
            for index, text in zip(batch, texts):
                answers[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args[:2], text)
            progress.update(len(batch))
        progress.close()
        return answers

    def _continuation(self, target, task: str, split: str, doc_id) -> list[int]:
        text = target if isinstance(target, str) else str(target(self.task_dict[task][split][doc_id]))
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """args per request: (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split).
        Returns (log p(continuation | context, image), whether greedy decoding would produce it). The
        context is laid out as a generation prompt (the user turn, then the assistant's opening); the
        continuation is tokenised on its own and scored without an end-of-turn token."""
        scores: list[tuple[float, bool] | None] = [None] * len(requests)
        for batch in batches_by_key([None] * len(requests), self.batch_size):
            contexts, continuations, images = [], [], []
            # acc_mutual_info's unconditional requests carry only (context, continuation)
            for context, target, visual, doc_id, task, split in ((*requests[i].args, *[None] * 4)[:6] for i in batch):
                question, image = self._request_input(context, visual, doc_id, task, split)
                row = prompt_row(self.model, self.config, question, image is not None)
                contexts.append(row or [self.model.tokenizer.eos_token_id])  # something to predict from
                continuations.append(self._continuation(target, task, split, doc_id))
                images.append(image)
            for index, score in zip(batch, continuation_logprobs(self.model, contexts, continuations, images)):
                scores[index] = score
        return scores

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """args per request: (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split). Round 0
        answers the context; then `doc_to_text(doc, previous_output=, round_idx=, previous_round_info=)`
        gives (visuals, context, done, outputs so far, info) for the next round, until `done`; the request's
        result is the task's list of round outputs. One request at a time."""
        results = []
        for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (r.args for r in requests):
            options = GenerationOptions.from_gen_kwargs(gen_kwargs)
            question, image = self._request_input(context, doc_to_visual, doc_id, task, split)
            doc, outputs, info, round_idx = self.task_dict[task][split][doc_id], [], None, 0
            while True:
                outputs.append(generate_texts(self.model, self.config, [question], [image], options)[0])
                round_idx += 1
                visuals, context, done, outputs, info = doc_to_text(doc, previous_output=outputs, round_idx=round_idx,
                                                                    previous_round_info=info)
                outputs = list(outputs)
                if done:
                    break
                question = self._question(context)
                image = self._image(visuals, f"{task}/{split} document {doc_id}, round {round_idx}")
            results.append(outputs)
        return results
