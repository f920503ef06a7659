"""OpenAI chat-completions requests -> what vlalign answers from, and OpenAI's response, chunk and error shapes.

Accepted: `model`, `messages` (system/developer, user, assistant; user content a string or parts of type
`text` and `image_url` with a `data:` URI), `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
`stream`, `stream_options.include_usage`, `seed`, `n` = 1, `presence_penalty` / `frequency_penalty` = 0,
`user`. Any other field is refused by name, as OpenAI refuses it, so a client never believes a setting took
effect when it did not. Omitted `temperature` means greedy decoding (vlalign's default; OpenAI's is 1).

The image: one per conversation, wherever its part sits; it is placed where training placed it, at the
start of the first user turn. The server fetches nothing: `http(s)://` image URLs are refused.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlalign.data.image_files import decode_image_bytes
from vlalign.serve.generation import Reply, RequestError, Sampling, Turn

ROLES = ("system", "developer", "user", "assistant")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, strict=True)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, strict=True)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, gt=0, le=1, strict=True)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, strict=True)
    seed: int | None = Field(default=None, strict=True)
    presence_penalty: float | None = Field(default=None, ge=0, le=0, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=0, le=0, strict=True)
    user: str | None = Field(default=None, strict=True)


@dataclass(frozen=True)
class Conversation:
    system_prompt: str | None  # None: the checkpoint's own
    turns: list[Turn]
    image: Image.Image | None


def _location(loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_error(error: ValidationError) -> RequestError:
    """The first problem pydantic found, named the way OpenAI names it."""
    first = error.errors()[0]
    where = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        return RequestError(f"Unrecognized request argument supplied: {where}", param=where,
                            code="unknown_parameter")
    message = first["msg"]
    if first["type"] in ("less_than_equal", "greater_than_equal") and where in ("n", "presence_penalty",
                                                                               "frequency_penalty"):
        message = f"only {1 if where == 'n' else 0} is supported by this server"
    return RequestError(f"{where}: {message} (got {first.get('input')!r})", param=where, code="invalid_value")


def parse_request(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        raise validation_error(error) from None


def sampling_of(request: ChatCompletionRequest, default_max_new_tokens: int) -> Sampling:
    max_new = request.max_completion_tokens or request.max_tokens or default_max_new_tokens
    return Sampling(max_new_tokens=max_new, temperature=request.temperature or 0.0,
                    top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed)


def decode_data_uri(url: Any, where: str) -> Image.Image:
    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}: expected a data: URI string", param=where, code="invalid_image")
    if not url.startswith("data:"):
        raise RequestError(f"{where}: only data: URIs (data:image/png;base64,...) are accepted; this server "
                           f"fetches no URL", param=where, code="invalid_image")
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise RequestError(f"{where}: expected data:<type>;base64,<data>", param=where, code="invalid_image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: the image data is not valid base64", param=where,
                           code="invalid_image") from None
    try:
        return decode_image_bytes(data)
    except OSError as error:
        raise RequestError(f"{where}: {error}", param=where, code="invalid_image") from None


def _part_text(part: Any, where: str, images: list) -> str | None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise RequestError(f"{where}: each content part needs a 'type'", param=where)
    if part["type"] == "text" and set(part) <= {"type", "text"} and isinstance(part.get("text"), str):
        return part["text"]
    if part["type"] == "image_url" and set(part) <= {"type", "image_url"}:
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if isinstance(image_url, dict) and not set(image_url) <= {"url", "detail"}:
            raise RequestError(f"{where}.image_url: only 'url' and 'detail' are accepted", param=where)
        images.append(decode_data_uri(url, f"{where}.image_url.url"))
        return None
    if part["type"] in ("text", "image_url"):
        raise RequestError(f"{where}: a {part['type']} part is {{'type': 'text', 'text': str}} or "
                           f"{{'type': 'image_url', 'image_url': {{'url': 'data:...'}}}}", param=where)
    raise RequestError(f"{where}: content parts of type {part['type']!r} are not supported (text and "
                       f"image_url are)", param=where, code="unsupported_content")


def _message_text(message: dict, where: str, images: list) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content: expected a string or a list of parts", param=f"{where}.content")
    found = len(images)
    texts = [_part_text(part, f"{where}.content[{i}]", images) for i, part in enumerate(content)]
    if len(images) > found and message["role"] != "user":
        raise RequestError(f"{where}: images belong in user messages", param=where)
    return "\n".join(text for text in texts if text is not None)


def parse_messages(messages: list[dict]) -> Conversation:
    system, turns, images = [], [], []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}",
                               param=f"{where}.role")
        if unknown := sorted(set(message) - {"role", "content", "name"}):
            raise RequestError(f"{where}: unrecognized message field(s) {', '.join(unknown)}", param=where,
                               code="unknown_parameter")
        text = _message_text(message, where, images)
        if role in ("system", "developer"):
            if turns:
                raise RequestError(f"{where}: system messages must come before the conversation", param=where)
            system.append(text)
        else:
            turns.append(Turn(role, text))
    if len(images) > 1:
        raise RequestError(f"the model takes one image per conversation; the request has {len(images)}",
                           param="messages", code="too_many_images")
    return Conversation("\n".join(system) if system else None, turns, images[0] if images else None)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def completion(reply: Reply, model: str) -> dict:
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": usage(reply)}


def chunk(base: dict, delta: dict, finish_reason: str | None = None) -> dict:
    return {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def error_body(message: str, *, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
