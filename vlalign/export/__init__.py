"""Exports of a trained checkpoint to formats that other tools load.

- `llava` (llava.py): transformers' `LlavaForConditionalGeneration` folder, which vLLM, lmms-eval's `llava_hf` and
  the model hub read; for HF vision towers with the `linear` or `mlp2x_gelu` connector.
- `remote-code` (remote_code.py): a self-contained folder with its modeling code, for what Llava cannot express.

This package file imports nothing: the command line builds every parser at start and must not pull in torch.
"""
