"""Talking to a trained checkpoint: `vlalign chat` (terminal) and `vlalign serve` (web UI + OpenAI-compatible API).

Nothing is imported here: `vlalign.serve.cli` must stay light for `vlalign --help`, and only the serve
command pulls in gradio and FastAPI. Conversation rendering and streaming generation live in one place,
`vlalign.serve.generation`, shared by the terminal chat, the API and the web UI.
"""
