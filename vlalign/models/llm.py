"""The causal LLM and its tokenizer, with the `<image>` placeholder token added."""

from __future__ import annotations

from vlalign.errors import ModelSourceError
from vlalign.models import varlen_attention
from vlalign.models.sources import hf_folder_for_gguf, load_or_explain, parse_source


def resolve_llm_folder(source_text: str) -> str:
    source = parse_source(source_text)
    if source.kind == "gguf":
        return str(hf_folder_for_gguf(source.location))
    if source.kind != "hf":
        raise ModelSourceError(f"LLM {source_text!r}: a {source.kind} source is not a causal language model")
    return source.location


def load_tokenizer(folder: str, image_token: str):
    # transformers imported on use (here and in load_llm): `vlalign train` / `info` check a config before any model loads
    from transformers import AutoTokenizer

    tokenizer = load_or_explain(folder, "tokenizer", lambda: AutoTokenizer.from_pretrained(folder))
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceError(f"tokenizer of {folder!r} is not a fast tokenizer; label masking needs offsets")
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        # Padding is masked out by the attention mask and labels, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_is_causal_lm(source_text: str, folder: str) -> None:
    """Before the tokenizer (whose error for a folder without one talks about sentencepiece): the config must be
    one that AutoModelForCausalLM builds."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = load_or_explain(folder, "LLM", lambda: AutoConfig.from_pretrained(folder))
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelSourceError(f"model.llm {source_text!r} is a {config.model_type!r} model, not a causal language "
                               f"model (e.g. a Llama, Qwen, Vicuna or SmolLM folder or hub id); was it meant for "
                               f"model.vision_tower?")


def load_llm(source_text: str, image_token: str, attn_implementation: str = "sdpa"):
    """Returns (causal LM with room for the image token, tokenizer, image token id)."""
    from transformers import AutoModelForCausalLM

    if attn_implementation == varlen_attention.NAME:
        varlen_attention.register()

    folder = resolve_llm_folder(source_text)
    check_is_causal_lm(source_text, folder)
    tokenizer = load_tokenizer(folder, image_token)
    model = load_or_explain(
        source_text, "LLM",
        lambda: AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn_implementation))
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if image_token_id >= old_rows:
        # mean_resizing=False avoids a covariance pass over a large vocabulary; the new rows are then set below.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        set_new_rows_to_mean(model, old_rows)
    return model, tokenizer, image_token_id


def set_new_rows_to_mean(model, old_rows: int) -> None:
    """Rows added for `<image>` (embedding, LM head, LM-head bias) := the mean of the original rows.

    The input row is always replaced by visual tokens, but the LM head's row gives `<image>` a logit. Drawn at
    random (transformers' default), it differed at every load of a checkpoint that does not store the LLM
    (stage 1, LoRA): two loads of one checkpoint, or two ranks, could answer differently. The mean row is
    the same at every load and gives the new token an ordinary, not a dominant, logit.
    """
    import torch  # on use, like transformers above: the config checks import this module

    output = model.get_output_embeddings()
    matrices = [model.get_input_embeddings().weight]
    if output is not None:
        matrices += [output.weight] + ([output.bias] if getattr(output, "bias", None) is not None else [])
    with torch.no_grad():
        for matrix in {id(m): m for m in matrices}.values():  # a tied head shares the embedding's tensor
            matrix[old_rows:] = matrix[:old_rows].mean(dim=0)
