"""`vlalign serve` in a subprocess: the OpenAI-compatible API through the `openai` client (plain and
streamed answers equal to the greedy answers of `vlalign generate`), OpenAI-shaped 4xx errors for bad requests
with the server still answering afterwards, concurrent requests each with its own answer; and the web UI in
headless Chromium (Debian's package, driven by Playwright): upload, ask, the streamed answer, the screenshot,
the recalled-words picture."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import (MAX_NEW_TOKENS, Server, data_uri, greedy_answer, greedy_from_ids, tiny_checkpoint,
                           training_prefix_ids)

from vlalign.train.load import load_checkpoint_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
QUESTION = "What color is the circle?"
MODEL = "tiny-vlm"
FOLLOW_UP = "Describe the image briefly."


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models, toy_data):
    """(server, model, config, image folder): one server for the whole module."""
    folder = tmp_path_factory.mktemp("serve_stage2")
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_models, toy_data)
    server = Server(checkpoint, folder / "server.log", "--model-name", MODEL).wait_ready()
    model, config = load_checkpoint_model(checkpoint, "cpu")
    yield server, model, config, toy_data["image_root"] / "images"
    server.stop()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0].url}/v1", api_key="not-checked", max_retries=0, timeout=120)


def _user(question: str, image: Path | None) -> list[dict]:
    content = [{"type": "text", "text": question}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_uri(image)}})
    return [{"role": "user", "content": content}]


def _model_id(client) -> str:
    return client.models.list().data[0].id


def test_the_api_answers_as_vlalign_generate_plain_and_streamed(served, client):
    server, model, config, images = served
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    expected = greedy_answer(model, config, images / "00000.png", QUESTION)
    assert len(expected.split()) > 1  # a trained model's words, not an empty answer
    response = client.chat.completions.create(model=MODEL, messages=_user(QUESTION, images / "00000.png"),
                                              max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason in ("stop", "length") and response.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model=MODEL, messages=_user(QUESTION, images / "00000.png"),
                                            max_tokens=MAX_NEW_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == expected and len(pieces) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == response.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens
    # A text-only question and a second turn, through the same route.
    text_only = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=MAX_NEW_TOKENS)
    assert text_only.choices[0].message.content == greedy_answer(model, config, None, QUESTION)


def test_the_stream_is_openai_server_sent_events_ending_with_done(served):
    server, _, _, images = served
    body = {"messages": _user(QUESTION, images / "00001.png"), "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def _post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=60, **({"json": body} if body is not None else {}),
                      **kwargs)


def _image_message(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"this is not an image").decode()
BAD_REQUESTS = [
    (_image_message(NOT_AN_IMAGE), 400, "cannot decode embedded image", "messages[0].content[0].image_url.url"),
    (_image_message("data:image/png;base64,@"), 400, "not valid base64", "messages[0].content[0].image_url.url"),
    (_image_message("https://x.org/a.png"), 400, "fetches no URL", "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "circle " * 700}]}, 400, "maximum context length is 512", "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}}, 400,
     "Unrecognized request argument supplied: logit_bias", "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, 400, "unrecognized message field",
     "messages[0]"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature: Input should be",
     "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, 400, "max_tokens", "max_tokens"),
    ({"messages": "hi"}, 400, "messages: Input should be a valid list", "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role: expected one of", "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "'input_audio' are not supported",
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "must end with a user turn", "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "turns must alternate",
     "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "only 1 is supported", "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, 404, "`gpt-4o` does not exist", "model"),
    ({"messages": []}, 400, "at least 1 item", "messages"),
    ({"model": MODEL}, 400, "messages: Field required", "messages"),
]


@pytest.mark.parametrize("body,status,message,param", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests_get_an_openai_error_and_the_server_goes_on(served, body, status, message, param):
    server = served[0]
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param and error["type"].endswith("_error")
    assert _post(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_a_body_that_is_not_json_and_two_images_are_refused(served):
    server, _, _, images = served
    response = _post(server, None, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    two = _user("compare", images / "00000.png")
    two[0]["content"].append({"type": "image_url", "image_url": {"url": data_uri(images / "00001.png")}})
    response = _post(server, {"messages": two})
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"


def test_the_openai_client_sees_bad_requests_as_its_own_errors(served, client):
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: logprobs"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def test_concurrent_requests_are_queued_and_get_their_own_answers(served, client):
    """Different images, questions and lengths, streamed and not, all at once: each its own answer."""
    _, model, config, images = served
    asks = [(QUESTION, images / "00000.png", True, 3), ("Describe the image briefly.", images / "00002.png", False, 24),
            ("How many shapes are in the picture?", images / "00003.png", True, 4), (QUESTION, None, False, 5),
            ("How many shapes are in the picture?", None, True, 2)]
    expected = [greedy_answer(model, config, image, question, tokens) for question, image, _, tokens in asks]
    assert len(set(expected)) == len(asks)  # nothing to mix up otherwise
    got, start = [None] * len(asks), threading.Barrier(len(asks))

    def ask(index):
        question, image, stream, tokens = asks[index]
        start.wait()
        kwargs = dict(model=MODEL, messages=_user(question, image), max_tokens=tokens, temperature=0)
        if stream:
            got[index] = "".join(c.choices[0].delta.content or "" for c in
                                 client.chat.completions.create(stream=True, **kwargs) if c.choices)
        else:
            got[index] = client.chat.completions.create(**kwargs).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert got == expected


def test_the_web_ui_in_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    server, model, config, images = served
    image = images / "00000.png"
    expected = greedy_answer(model, config, image, QUESTION)
    turns = [("user", QUESTION), ("assistant", expected), ("user", FOLLOW_UP)]
    follow_up = greedy_from_ids(model, training_prefix_ids(model, config, image, turns), image)
    assert follow_up != expected
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            # Nothing but the server: a page that needed the network would fail here, as it would offline.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
                       else route.abort())
            _chat_in_the_page(page, server, image, [expected, follow_up], tmp_path)
        finally:
            browser.close()


def _ask_in_the_page(page, question: str, previous: str) -> str:
    page.locator("#vlalign-question textarea").fill(question)
    page.locator("#vlalign-send").click()
    page.wait_for_function("previous => document.querySelector('#vlalign-last-answer textarea').value !== previous",
                           arg=previous, timeout=120_000)
    return page.locator("#vlalign-last-answer textarea").input_value()


def _chat_in_the_page(page, server, image: Path, expected: list[str], tmp_path: Path) -> None:
    page.goto(server.url + "/")  # not "networkidle": the page keeps a heartbeat stream open
    page.locator("#vlalign-image input[type=file]").set_input_files(str(image))
    page.locator("#vlalign-image img").first.wait_for(timeout=60_000)
    assert _ask_in_the_page(page, QUESTION, "") == expected[0]
    assert " ".join(expected[0].split()) in " ".join(page.locator("#vlalign-chat").inner_text().split())
    page.screenshot(path=str(tmp_path / "serve_ui_answer.png"), full_page=True)
    assert _ask_in_the_page(page, FOLLOW_UP, expected[0]) == expected[1]  # the conversation goes on
    shown = " ".join(page.locator("#vlalign-chat").inner_text().split())
    assert all(" ".join(text.split()) in shown for text in (QUESTION, expected[0], FOLLOW_UP, expected[1]))
    page.locator("#vlalign-recall").click()
    page.locator("#vlalign-recalled img").first.wait_for(timeout=60_000)
    page.wait_for_function("document.querySelector('#vlalign-recall-note').innerText.includes('most recalled')",
                           timeout=60_000)
    assert "4x4 visual tokens" in page.locator("#vlalign-recall-note").inner_text()
    page.screenshot(path=str(tmp_path / "serve_ui_recalled_words.png"), full_page=True)
    assert (tmp_path / "serve_ui_answer.png").stat().st_size > 10_000
