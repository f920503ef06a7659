"""Content hashes of modules, for the caches keyed by the weights that made them (caption embeddings, tower
features): config-independent, and cheap enough for a 7B model."""

from __future__ import annotations

import hashlib

from torch import nn


def update_with_weights(digest, module: nn.Module) -> None:
    """Feed every tensor's name, shape and its first and last 64 values into `digest` (hashlib object): any
    retrained, re-initialised or swapped weight changes it, without reading all of a large model."""
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:64].float().cpu().numpy().tobytes() + flat[-64:].float().cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample)


def weights_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    update_with_weights(digest, module)
    return digest.hexdigest()
