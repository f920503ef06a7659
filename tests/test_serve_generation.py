"""vlalign.serve.generation: conversations rendered exactly as training rendered them, the stream adding up to
the greedy answer of `vlalign generate`, requests the model cannot answer refused clearly, one generation at
a time; the stage-1 (plain) rules, also through the API."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serve_helpers import (MAX_NEW_TOKENS, data_uri, greedy_answer, greedy_from_ids, tiny_checkpoint,
                           training_prefix_ids)

from vlalign.data.build import read_chat_template
from vlalign.data.templates import prompt_ids
from vlalign.serve.api import add_api_routes
from vlalign.serve.probe import RecalledWords, read_words, tokenizer_words
from vlalign.serve.generation import (ChatModel, RequestError, Sampling, Turn, _default_name, _Deltas,
                                      render_conversation)
from vlalign.train.load import load_checkpoint_model

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_models, toy_data) -> ChatModel:
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_models, toy_data)
    model, config = load_checkpoint_model(checkpoint, "cpu")
    return ChatModel(model, config, name="tiny")


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory, tiny_models, toy_data) -> ChatModel:
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_models, toy_data, stage=1)
    model, config = load_checkpoint_model(checkpoint, "cpu")
    return ChatModel(model, config, name="tiny-stage1")


def _image(toy_data, index: int = 0):
    return toy_data["image_root"] / "images" / f"{index:05d}.png"


def _render(chat_model: ChatModel, turns, with_image: bool, system_prompt=None) -> list[int]:
    model = chat_model.model
    return render_conversation(model.tokenizer, chat_model.format, [Turn(r, t) for r, t in turns],
                               model.image_token_id if with_image else None, model.num_visual_tokens,
                               system_prompt, read_chat_template(chat_model.config.data.chat_template))


@pytest.mark.parametrize("with_image", [True, False])
def test_one_turn_is_the_prompt_of_vlalign_generate(chat_model, with_image):
    model = chat_model.model
    expected = prompt_ids(model.tokenizer, "chat", QUESTION, model.image_token_id if with_image else None,
                          model.num_visual_tokens)
    assert _render(chat_model, [("user", QUESTION)], with_image) == expected
    assert expected.count(model.image_token_id) == (model.num_visual_tokens if with_image else 0)


@pytest.mark.parametrize("with_image,system_prompt",
                         [(True, None), (False, None), (True, "You are a helpful assistant.")])
def test_later_turns_are_rendered_as_training_rendered_them(chat_model, toy_data, with_image, system_prompt):
    turns = [("user", QUESTION), ("assistant", "The circle is red."), ("user", "How many shapes are in the picture?"),
             ("assistant", "There are 2 shapes."), ("user", "Describe the image briefly.")]
    image = _image(toy_data) if with_image else None
    for end in (1, 3, 5):
        expected = training_prefix_ids(chat_model.model, chat_model.config, image, turns[:end], system_prompt)
        assert _render(chat_model, turns[:end], with_image, system_prompt) == expected


def test_the_stream_adds_up_to_the_greedy_answer(chat_model, toy_data):
    image = _image(toy_data)
    expected = greedy_answer(chat_model.model, chat_model.config, image, QUESTION)
    assert len(expected.split()) > 1  # a trained model's words, not an empty answer
    prompt = chat_model.prepare([Turn("user", QUESTION)], image, MAX_NEW_TOKENS)
    generation = chat_model.stream(prompt, Sampling(max_new_tokens=MAX_NEW_TOKENS))
    pieces = list(generation)
    assert "".join(pieces) == expected == generation.reply.text
    assert len(pieces) > 1  # streamed, not handed over at the end
    reply = generation.reply
    assert reply.prompt_tokens == len(prompt.input_ids)
    assert 1 <= reply.completion_tokens <= MAX_NEW_TOKENS
    assert reply.finish_reason == ("length" if reply.completion_tokens == MAX_NEW_TOKENS else "stop")
    # The second turn: what training would have put before the answer, generated greedily.
    turns = [("user", QUESTION), ("assistant", expected), ("user", "Describe the image briefly.")]
    second = chat_model.prepare([Turn(r, t) for r, t in turns], image, MAX_NEW_TOKENS)
    independent = greedy_from_ids(chat_model.model, training_prefix_ids(chat_model.model, chat_model.config,
                                                                         image, turns), image)
    assert chat_model.answer(second, Sampling(max_new_tokens=MAX_NEW_TOKENS)).text == independent


def test_sampling_with_a_seed_repeats_and_greedy_ignores_top_p(chat_model, toy_data):
    prompt = chat_model.prepare([Turn("user", QUESTION)], _image(toy_data), MAX_NEW_TOKENS)
    sampled = [chat_model.answer(prompt, Sampling(MAX_NEW_TOKENS, temperature=1.5, top_p=0.9, seed=7)).text
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert Sampling(8, temperature=0, top_p=0.5).generation_kwargs() == {"max_new_tokens": 8, "do_sample": False}


def test_concurrent_generations_wait_their_turn_and_keep_their_answers(chat_model, toy_data):
    asks = [(QUESTION, _image(toy_data, 0), 3), ("Describe the image briefly.", _image(toy_data, 1), 24),
            ("How many shapes are in the picture?", None, 24), (QUESTION, None, 2)]
    expected = [greedy_answer(chat_model.model, chat_model.config, image, q, n) for q, image, n in asks]
    assert len(set(expected)) == len(asks)
    got, start = [None] * len(asks), threading.Barrier(len(asks))

    def run(index):
        question, image, tokens = asks[index]
        prompt = chat_model.prepare([Turn("user", question)], image, tokens)
        start.wait()
        got[index] = "".join(chat_model.stream(prompt, Sampling(max_new_tokens=tokens)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected
    assert not chat_model.lock.locked()


def test_the_model_id_is_the_run_folder_name(tmp_path):
    assert _default_name(tmp_path / "runs" / "stage2" / "final") == "stage2"
    assert _default_name(tmp_path / "runs" / "stage2") == "stage2"


def test_a_stream_dropped_half_way_frees_the_model(chat_model, toy_data):
    prompt = chat_model.prepare([Turn("user", QUESTION)], _image(toy_data), MAX_NEW_TOKENS)
    pieces = iter(chat_model.stream(prompt, Sampling(max_new_tokens=MAX_NEW_TOKENS)))
    next(pieces)
    assert chat_model.lock.locked()
    pieces.close()  # a closed connection
    assert not chat_model.lock.locked()


class _Letters:
    """A tokenizer stand-in: token i decodes to PIECES[i]; 4 and 5 are the two halves of one character."""

    PIECES = {0: " ", 1: "a", 2: "b", 3: "\n", 4: b"\xc3", 5: b"\xa9"}

    def decode(self, tokens, skip_special_tokens=True):
        raw = b"".join(p if isinstance(p, bytes) else p.encode() for p in (self.PIECES[t] for t in tokens))
        return raw.decode("utf-8", errors="replace")


def test_pieces_hold_back_edge_whitespace_and_half_characters():
    deltas, tokens = _Deltas(_Letters()), [0, 1, 0, 4, 5, 2, 3, 0]
    pieces = [deltas.add([token]) for token in tokens]
    assert pieces == ["", "a", "", "", " \u00e9", "b", "", ""]
    final = _Letters().decode(tokens).strip()
    assert "".join(pieces) + deltas.finish(final) == final == "a \u00e9b"


def test_what_a_checkpoint_cannot_answer_is_refused_by_name(chat_model, plain_model, toy_data):
    with pytest.raises(RequestError, match="plain-format \\(stage 1\\): it answers only about an image") as error:
        plain_model.prepare([Turn("user", "Describe it.")], None, 8)
    assert error.value.code == "image_required"
    with pytest.raises(RequestError, match="no chat template: it answers one user message"):
        plain_model.prepare([Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")], _image(toy_data), 8)
    with pytest.raises(RequestError, match="maximum context length is 512 tokens") as error:
        chat_model.prepare([Turn("user", "circle " * 600)], _image(toy_data), 8)
    assert error.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="must end with a user turn"):
        chat_model.prepare([Turn("user", "a"), Turn("assistant", "b")], None, 8)
    with pytest.raises(RequestError, match="alternate"):
        chat_model.prepare([Turn("user", "a"), Turn("user", "b")], None, 8)


def test_the_api_of_a_stage1_checkpoint_wants_an_image_and_answers_with_one(plain_model, toy_data):
    client = TestClient(add_api_routes(FastAPI(), plain_model, MAX_NEW_TOKENS))
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Describe it."}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "image_required"
    assert "answers only about an image" in response.json()["error"]["message"]
    image = _image(toy_data)
    content = [{"type": "image_url", "image_url": {"url": data_uri(image)}}, {"type": "text", "text": ""}]
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                         "temperature": 0})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == greedy_answer(plain_model.model, plain_model.config,
                                                                                 image, "")


def test_the_probe_names_its_words_and_says_when_there_is_no_patch_grid(chat_model, toy_data, tmp_path):
    words = tokenizer_words(chat_model.model.tokenizer)
    assert {"shapes", "triangle", "purple"} <= set(words) and all(word.isalpha() for word in words)
    (tmp_path / "words.txt").write_text("# colours\nred\nblue\nred\n")
    assert read_words(tmp_path / "words.txt") == ["red", "blue"]
    probe = RecalledWords(chat_model, tmp_path / "pictures", tmp_path / "words.txt")
    assert probe.unavailable is None
    path, summary = probe.draw(_image(toy_data))
    assert path.is_file() and path.parent == tmp_path / "pictures"
    assert summary.startswith(f"4x4 visual tokens against the words of {tmp_path / 'words.txt'}; most recalled: ")
    gridless = SimpleNamespace(model=SimpleNamespace(token_grid=lambda: None, num_visual_tokens=32,
                                                     config=SimpleNamespace(connector="qformer")))
    reason = RecalledWords(gridless, tmp_path).unavailable
    assert "connector (qformer) gives 32 visual tokens that are not laid out on the image's patch grid" in reason
