"""The OpenAI-compatible routes: `POST /v1/chat/completions` (plain JSON or server-sent events) and
`GET /v1/models`.

Every problem with a request is answered before any generation starts, as a 4xx with OpenAI's error body
({"error": {"message", "type", "param", "code"}}); an unexpected failure is a 500 with the same body, and
the server goes on. Generations run one at a time behind the model's lock (requests wait their turn in
the thread pool), each request with its own prompt, streamer and reply, so answers never mix.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from vlalign.serve import openai_schema as schema
from vlalign.serve.generation import ChatModel, Generation, RequestError

MAX_BODY_BYTES = 32 * 2**20  # a request larger than this (base64 images included) is refused unread
log = logging.getLogger(__name__)


def _error(status: int, message: str, **fields) -> JSONResponse:
    return JSONResponse(schema.error_body(message, **fields), status_code=status)


def _request_error(error: RequestError) -> JSONResponse:
    kind = "not_found_error" if error.status == 404 else "invalid_request_error"
    return _error(error.status, error.message, param=error.param, code=error.code, kind=kind)


async def _read_json(request: Request):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="request_too_large",
                           status=413)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="request_too_large",
                           status=413)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON: {error}", code="invalid_json") from None


def _prepare(chat_model: ChatModel, body, default_max_new_tokens: int):
    """Everything that can be wrong with a request, found here, before a stream opens."""
    request = schema.parse_request(body)
    if request.model is not None and request.model != chat_model.name:
        raise RequestError(f"The model `{request.model}` does not exist; this server has `{chat_model.name}`",
                           param="model", code="model_not_found", status=404)
    conversation = schema.parse_messages(request.messages)
    sampling = schema.sampling_of(request, default_max_new_tokens)
    prompt = chat_model.prepare(conversation.turns, conversation.image, sampling.max_new_tokens,
                                conversation.system_prompt)
    return request, prompt, sampling


def _events(generation: Generation, model: str, include_usage: bool) -> Iterator[str]:
    """OpenAI's stream: a role chunk, content chunks, a finish chunk, the usage chunk if asked, [DONE]."""
    base = {"id": schema.completion_id(), "created": int(time.time()), "model": model}

    def event(data: dict) -> str:
        return f"data: {json.dumps(data)}\n\n"

    yield event(schema.chunk(base, {"role": "assistant", "content": ""}))
    try:
        for piece in generation:
            yield event(schema.chunk(base, {"content": piece}))
    except Exception as error:  # headers are sent: the failure travels in the stream, as OpenAI's does
        log.exception("generation failed mid-stream")
        yield event(schema.error_body(f"generation failed: {error}", kind="server_error"))
        yield "data: [DONE]\n\n"
        return
    reply = generation.reply
    yield event(schema.chunk(base, {}, reply.finish_reason))
    if include_usage:
        yield event({**base, "object": "chat.completion.chunk", "choices": [], "usage": schema.usage(reply)})
    yield "data: [DONE]\n\n"


def add_api_routes(app: FastAPI, chat_model: ChatModel, default_max_new_tokens: int = 64) -> FastAPI:
    started = int(time.time())

    card = {"id": chat_model.name, "object": "model", "created": started, "owned_by": "vlalign"}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str):
        if model_id != chat_model.name:
            return _error(404, f"The model `{model_id}` does not exist; this server has `{chat_model.name}`",
                          param="model", code="model_not_found", kind="not_found_error")
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await _read_json(request)
            parsed, prompt, sampling = await run_in_threadpool(_prepare, chat_model, body, default_max_new_tokens)
            generation = chat_model.stream(prompt, sampling)
            if parsed.stream:
                include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
                return StreamingResponse(_events(generation, chat_model.name, include_usage),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            reply = await run_in_threadpool(_finish, generation)
            return JSONResponse(schema.completion(reply, chat_model.name))
        except RequestError as error:
            return _request_error(error)
        except Exception as error:  # a bug, not a bad request: logged, answered, and the server goes on
            log.exception("chat completion failed")
            return _error(500, f"internal error: {type(error).__name__}: {error}", kind="server_error")

    return app


def _finish(generation: Generation):
    for _ in generation:
        pass
    return generation.reply
