"""`vlalign chat` through a pseudo-terminal (pexpect): typed questions, streamed answers equal to the greedy
answers of `vlalign generate` (and, for a later turn, to what training's rendering of the conversation
gives), `/image`, `/reset`, `/exit`, and a bad `/image` path that costs one line, not the chat."""

from __future__ import annotations

import pexpect
import pytest
from serve_helpers import (MAX_NEW_TOKENS, greedy_answer, greedy_from_ids, subprocess_env, tiny_checkpoint,
                           training_prefix_ids, vlalign_command)

from vlalign.train.load import load_checkpoint_model

PROMPT, ANSWER = "you> ", "model> "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_models, toy_data):
    return tiny_checkpoint(tmp_path_factory, tiny_models, toy_data)


def _ask(child: pexpect.spawn, question: str) -> str:
    """Type a question; the text between the answer prompt and the next question prompt."""
    child.sendline(question)
    child.expect_exact(ANSWER)
    child.expect_exact("\r\n" + PROMPT)
    return child.before.replace("\r\n", "\n")


def _lines_until_prompt(child: pexpect.spawn, typed: str) -> list[str]:
    child.sendline(typed)
    child.expect_exact(PROMPT)
    lines = child.before.replace("\r\n", "\n").split("\n")
    assert lines[0] == typed  # the terminal's echo of what was typed
    return [line for line in lines[1:] if line]


def test_chat_streams_greedy_answers_and_obeys_its_commands(checkpoint, toy_data, tmp_path):
    images = toy_data["image_root"] / "images"
    first, second = images / "00000.png", images / "00001.png"
    model, config = load_checkpoint_model(checkpoint, "cpu")
    question, follow_up = "What color is the circle?", "Describe the image briefly."
    expected = greedy_answer(model, config, first, question)
    turns = [("user", question), ("assistant", expected), ("user", follow_up)]
    expected_follow_up = greedy_from_ids(model, training_prefix_ids(model, config, first, turns), first)

    child = pexpect.spawn(vlalign_command()[0], [*vlalign_command()[1:], "chat", "--checkpoint", str(checkpoint),
                                                 "--image", str(first), "--device", "cpu",
                                                 "--max-new-tokens", str(MAX_NEW_TOKENS)],
                          env=subprocess_env(), encoding="utf-8", timeout=240, dimensions=(50, 400))
    child.logfile_read = open(tmp_path / "chat.log", "w")
    child.expect_exact(PROMPT)
    banner = child.before
    assert "greedy" in banner and f"image: {first}" in banner and "/image PATH" in banner
    assert _ask(child, question) == expected
    assert _ask(child, follow_up) == expected_follow_up  # the conversation goes on, as training laid it out

    assert _lines_until_prompt(child, "/reset") == [f"new conversation about {first}"]
    assert _ask(child, question) == expected  # a fresh conversation: the first answer again

    bad = tmp_path / "missing.png"
    error = _lines_until_prompt(child, f"/image {bad}")
    assert len(error) == 1 and error[0].startswith(f"error: cannot read image {bad}")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    error = _lines_until_prompt(child, f"/image {tmp_path / 'broken.png'}")
    assert len(error) == 1 and error[0].startswith("error: cannot read image")
    # Still the first image, and the same conversation, which goes on with the question asked again.
    again = [("user", question), ("assistant", expected), ("user", question)]
    assert _ask(child, question) == greedy_from_ids(model, training_prefix_ids(model, config, first, again), first)

    assert _lines_until_prompt(child, f"/image {second}") == [f"image: {second} (new conversation)"]
    assert _ask(child, question) == greedy_answer(model, config, second, question)
    assert _lines_until_prompt(child, "/nonsense")[0].startswith("error: unknown command /nonsense")

    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_refuses_a_missing_image_before_loading_the_model(checkpoint, tmp_path):
    child = pexpect.spawn(vlalign_command()[0], [*vlalign_command()[1:], "chat", "--checkpoint", str(checkpoint),
                                                 "--image", str(tmp_path / "nope.png")],
                          env=subprocess_env(), encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert f"vlalign: error: --image {tmp_path / 'nope.png'} does not exist" in child.before


def test_the_chat_and_serve_parsers_import_neither_torch_nor_gradio():
    """`vlalign --help` stays instant with the two commands registered: their modules load in the handlers."""
    import subprocess
    import sys

    code = ("import sys; from vlalign.cli import build_parser; "
            "build_parser().parse_args(['serve', '--checkpoint', 'x']); "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'fastapi', 'uvicorn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
