"""`vlalign chat`: a multi-turn conversation with a checkpoint in the terminal, the answer printed as it is
generated.

Commands: `/image PATH` (a new image: the conversation starts over, since the image sits in the first user
turn as in training), `/reset` (forget the conversation, keep the image), `/exit` (or end of input).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TextIO

from PIL import Image

from vlalign.data.image_files import load_image
from vlalign.serve.generation import ChatModel, RequestError, Sampling, Turn

USER_PROMPT = "you> "
MODEL_PROMPT = "model> "
HELP = "commands: /image PATH (new image, new conversation), /reset (new conversation), /exit"


class ChatSession:
    """The state of one terminal conversation: the image and the turns so far."""

    def __init__(self, chat_model: ChatModel, sampling: Sampling, out: TextIO):
        self.chat_model, self.sampling, self.out = chat_model, sampling, out
        self.image: Path | None = None
        self.picture: Image.Image | None = None  # read once, when set
        self.turns: list[Turn] = []

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def set_image(self, path: str) -> None:
        """A path that cannot be read is one line of error; the image and conversation stay as they were."""
        path = path.strip().strip("'\"")
        if not path:
            self.say("error: /image needs a path")
            return
        try:
            picture = load_image(Path(path).expanduser())
        except OSError as error:
            self.say("error: " + " ".join(str(error).split()))
            return
        self.image, self.picture, self.turns = Path(path).expanduser(), picture, []
        self.say(f"image: {self.image} (new conversation)")

    def reset(self) -> None:
        self.turns = []
        self.say("new conversation" + (f" about {self.image}" if self.image else ""))

    def ask(self, question: str) -> None:
        if self.chat_model.needs_image:  # stage 1: no template, no history
            self.turns = []
        turns = [*self.turns, Turn("user", question)]
        try:
            prompt = self.chat_model.prepare(turns, self.picture, self.sampling.max_new_tokens)
        except RequestError as error:
            hint = " (/reset starts a new conversation)" if error.code == "context_length_exceeded" else ""
            self.say(f"error: {error.message}{hint}")
            return
        self.out.write(MODEL_PROMPT)
        generation = self.chat_model.stream(prompt, self.sampling)
        pieces = iter(generation)
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat; the turn is not kept
            pieces.close()
            self.say(" [interrupted]")
            return
        self.say("")
        self.turns = [*turns, Turn("assistant", generation.reply.text)]

    def handle(self, line: str) -> bool:
        """One line typed by the user; False once the chat should end."""
        text = line.strip()
        if text in ("/exit", "/quit"):
            return False
        if text == "/image" or text.startswith("/image "):
            self.set_image(text[len("/image"):])
        elif text == "/reset":
            self.reset()
        elif text in ("/help", "/?"):
            self.say(HELP)
        elif text.startswith("/"):
            self.say(f"error: unknown command {text.split()[0]}; {HELP}")
        elif text:
            self.ask(text)
        return True


def run_chat(chat_model: ChatModel, image: str | None, sampling: Sampling, *,
             read_line: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """The loop: read a line, answer it, until /exit or end of input."""
    session = ChatSession(chat_model, sampling, out)
    mode = ("greedy" if sampling.temperature <= 0
            else f"sampling at temperature {sampling.temperature}, top-p {sampling.top_p}")
    session.say(f"vlalign chat: {chat_model.name} ({chat_model.format} format, {mode}, "
                f"at most {sampling.max_new_tokens} new tokens)")
    if chat_model.needs_image:
        session.say("a plain-format (stage-1) checkpoint: each message is answered on its own, about the image")
    if image is not None:
        session.set_image(image)
    session.say(HELP)
    while True:
        try:
            line = read_line(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            session.say("")
            return
        if not session.handle(line):
            return
