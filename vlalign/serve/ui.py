"""The web UI of `vlalign serve` (Gradio): an image, a multi-turn chat streamed as it is generated, the
sampling controls, and the recalled-words picture (the nearest-word probe of `vlalign eval alignment` per
visual token, drawn over the image).

The conversation is kept as vlalign turns in the session's state, not read back from the chat display, so
what the model is given is exactly what `vlalign chat` and the API give it. A new image starts a new
conversation: the image sits in the first user turn, as in training.
"""

from __future__ import annotations

from typing import Iterator

import gradio as gr

from vlalign.errors import VlalignError
from vlalign.serve.generation import ChatModel, RequestError, Sampling, Turn
from vlalign.serve.probe import RecalledWords

TITLE = "vlalign"


def _display(turns: list[Turn]) -> list[dict]:
    return [{"role": turn.role, "content": turn.text} for turn in turns]


def _respond(chat_model: ChatModel, question: str, turns: list, image: str | None, temperature: float,
             top_p: float, max_new_tokens: float) -> Iterator[tuple]:
    """Outputs: chat display, question box, last answer, turns state, status line."""
    question = (question or "").strip()
    if not question:
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), "type a question first"
        return
    if chat_model.needs_image:  # stage 1: no template, no history
        turns = []
    sampling = Sampling(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
    asked = [*turns, Turn("user", question)]
    try:
        prompt = chat_model.prepare(asked, image, sampling.max_new_tokens)
    except (RequestError, OSError) as error:
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"error: {getattr(error, 'message', error)}"
        return
    generation, partial = chat_model.stream(prompt, sampling), ""
    for piece in generation:
        partial += piece
        yield [*_display(asked), {"role": "assistant", "content": partial}], "", gr.skip(), gr.skip(), "generating..."
    reply = generation.reply
    done = [*asked, Turn("assistant", reply.text)]
    ended = "the end-of-turn token" if reply.finish_reason == "stop" else "max new tokens"
    yield _display(done), "", reply.text, done, f"{reply.completion_tokens} tokens, ended by {ended}"


def _new_conversation(_image=None) -> tuple:
    return [], [], "", "new conversation"


def _recall(probe: RecalledWords, image: str | None) -> tuple:
    if (reason := probe.unavailable) is not None:
        return None, reason
    if image is None:
        return None, "upload an image first"
    try:
        path, summary = probe.draw(image)
    except (VlalignError, OSError) as error:
        return None, f"error: {error}"
    return str(path), summary


def build_ui(chat_model: ChatModel, probe: RecalledWords, default_max_new_tokens: int = 64) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"## vlalign · `{chat_model.name}` ({chat_model.format} format)")
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", format="png", sources=["upload", "clipboard"], label="Image",
                                 elem_id="vlalign-image", height=280)
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="vlalign-temperature")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (when sampling)", elem_id="vlalign-top-p")
                max_new = gr.Slider(1, max(1024, default_max_new_tokens), value=default_max_new_tokens, step=1,
                                    label="Max new tokens", elem_id="vlalign-max-new-tokens")
                recall = gr.Button("Show recalled words per patch", elem_id="vlalign-recall")
                recalled = gr.Image(label="Recalled words (nearest LLM word per visual token)", interactive=False,
                                    show_label=False, buttons=["download", "fullscreen"], elem_id="vlalign-recalled")
                recall_note = gr.Markdown(probe.unavailable or "", elem_id="vlalign-recall-note")
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="Conversation", elem_id="vlalign-chat", render_markdown=False,
                                  feedback_options=None, height=420)
                question = gr.Textbox(label="Question", placeholder="Ask about the image, then press Enter",
                                      elem_id="vlalign-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="vlalign-send")
                    reset = gr.Button("New conversation", elem_id="vlalign-reset")
                status = gr.Markdown("", elem_id="vlalign-status")
                last = gr.Textbox(label="Last answer (plain text)", interactive=False, elem_id="vlalign-last-answer")

        def respond(question_text, state, image_path, temp, p, max_tokens):
            yield from _respond(chat_model, question_text, state, image_path, temp, p, max_tokens)

        # One queue for every event, in arrival order: a new image's reset never lands after the answer to
        # the question asked right after it.
        queued = {"concurrency_id": "vlalign", "concurrency_limit": 1}
        ask = dict(fn=respond, inputs=[question, turns, image, temperature, top_p, max_new],
                   outputs=[chat, question, last, turns, status], **queued)
        send.click(**ask)
        question.submit(**ask)
        for trigger in (reset.click, image.change):
            trigger(_new_conversation, inputs=None, outputs=[chat, turns, last, status], **queued)
        recall.click(lambda image_path: _recall(probe, image_path), inputs=[image],
                     outputs=[recalled, recall_note], **queued)
    return blocks
