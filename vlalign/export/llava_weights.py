"""vlalign's three modules -> a transformers `LlavaForConditionalGeneration` holding the same weights.

The Llava model is built from its config on the meta device (no memory, no random init) and each part receives
vlalign's tensors with a strict `load_state_dict(assign=True)`: a tower or LLM whose weights do not fit the module
that Llava builds from the config (`AutoModel.from_config`) fails here, by name, instead of loading wrongly later.
`save_pretrained` then writes the weights in the key layout and shards that the installed transformers uses.
"""

from __future__ import annotations

import copy

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.conversion_mapping import get_model_conversion_mapping

from vlalign.errors import ConfigError
from vlalign.export.common import llava_refusal
from vlalign.models.connectors import LinearConnector, MLPConnector

# The names llava-hf's hub checkpoints use, which vLLM's Llava loader (its hf_to_vllm_mapper also takes the
# `model.`-prefixed names of transformers 4.52+), transformers 4.x and 5.x all read.
HUB_PREFIXES = ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.",
                "language_model.lm_head.")


def linear_as_llava_projector(weight: torch.Tensor, bias: torch.Tensor) -> tuple[dict[str, torch.Tensor], str]:
    """vlalign's `linear` connector (y = W x + b) in Llava's fixed linear_1 -> act -> linear_2 projector.

    vLLM's activation registry has no identity, so where the LLM is at least twice as wide as the tower the map is
    written with ReLU, which vLLM has: linear_1 = [I; -I; 0] gives [x; -x; 0], ReLU keeps relu(x) and relu(-x), and
    linear_2 = [W, -W, 0] gives W relu(x) - W relu(-x) + b = W x + b (each product term is W x's own; only the
    order of the sums differs, ~1e-7 in fp32). Otherwise linear_1 = W and `linear` (identity) with linear_2 = I,
    which transformers runs but vLLM cannot load (the export says so)."""
    text_dim, vision_dim = weight.shape
    zeros = torch.zeros(text_dim, dtype=weight.dtype)
    if 2 * vision_dim <= text_dim:
        eye = torch.eye(vision_dim, dtype=weight.dtype)
        first = torch.zeros(text_dim, vision_dim, dtype=weight.dtype)
        first[:vision_dim], first[vision_dim:2 * vision_dim] = eye, -eye
        second = torch.zeros(text_dim, text_dim, dtype=weight.dtype)
        second[:, :vision_dim], second[:, vision_dim:2 * vision_dim] = weight, -weight
        return {"linear_1.weight": first, "linear_1.bias": zeros, "linear_2.weight": second,
                "linear_2.bias": bias.detach().clone()}, "relu"
    return {"linear_1.weight": weight.detach().clone(), "linear_1.bias": bias.detach().clone(),
            "linear_2.weight": torch.eye(text_dim, dtype=weight.dtype), "linear_2.bias": zeros}, "linear"


def projector_state(connector: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """(Llava projector weights, projector_hidden_act) for a `linear` or `mlp2x_gelu` connector without options."""
    if isinstance(connector, MLPConnector):
        # nn.GELU() is the exact (erf) GELU, as transformers' and vLLM's "gelu"
        return dict(connector.state_dict()), "gelu"
    if isinstance(connector, LinearConnector):
        return linear_as_llava_projector(connector.linear.weight, connector.linear.bias)
    raise llava_refusal(f"the connector {type(connector).__name__}",
                        "only linear and mlp2x_gelu map onto Llava's projector")


def llava_config(model, feature_layer: int, strategy: str, act: str, tied: bool, dtype: torch.dtype) -> LlavaConfig:
    """The LlavaConfig of the exported model: the tower's and the LLM's own configs as sub-configs."""
    vision_config = copy.deepcopy(model.vision_tower.model.config)
    text_config = copy.deepcopy(model.language_model.config)
    # vlalign may have grown the vocabulary by the `<image>` row
    text_config.vocab_size = model.language_model.get_input_embeddings().weight.shape[0]
    text_config.tie_word_embeddings = tied
    if not getattr(text_config, "architectures", None):  # vLLM builds the language model from this class name
        text_config.architectures = [type(model.language_model).__name__]
    for sub_config in (vision_config, text_config):
        sub_config.dtype = dtype
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=model.image_token_id,
                         image_seq_length=model.num_visual_tokens, projector_hidden_act=act,
                         vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer,
                         multimodal_projector_bias=True, tie_word_embeddings=tied)
    config.dtype = dtype
    return config


def _load_part(target: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, part: str) -> None:
    """Strictly assign `state` to `target`, floating tensors cast to `dtype` (integer buffers stay as they are)."""
    cast = {name: (tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()).contiguous()
            for name, tensor in state.items()}
    try:
        target.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise llava_refusal(part, f"its weights do not fit the {type(target).__name__} that Llava builds from its "
                                  f"config ({first})") from None


def _same_class(built: nn.Module, ours: nn.Module, part: str) -> None:
    if type(built) is not type(ours):
        raise llava_refusal(part, f"Llava builds a {type(built).__name__} from its config (AutoModel.from_config), "
                                  f"vlalign runs a {type(ours).__name__}")


def _attach_head(llava, head: nn.Module, tied: bool, dtype: torch.dtype) -> None:
    if getattr(head, "bias", None) is not None:
        raise llava_refusal("the LLM's output head", "it has a bias and Llava's lm_head has none")
    if not tied:
        _load_part(llava.lm_head, {"weight": head.weight}, dtype, "the LLM's output head")
        return
    llava.tie_weights()
    if llava.lm_head.weight is not llava.get_input_embeddings().weight:  # tie_weights left it on meta
        llava.lm_head.weight = llava.get_input_embeddings().weight


def build_llava(model, feature_layer: int, strategy: str, dtype: torch.dtype) -> LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration holding `model`'s weights (LoRA already merged) in `dtype`."""
    tower, language_model = model.vision_tower.model, model.language_model
    base = getattr(language_model, language_model.base_model_prefix)  # e.g. LlamaForCausalLM.model: LlamaModel
    head, embeddings = language_model.get_output_embeddings(), language_model.get_input_embeddings()
    tied = head.weight is embeddings.weight
    projector, act = projector_state(model.multi_modal_projector)
    with init_empty_weights():  # parameters on meta, buffers (rotary frequencies, position ids) real
        llava = LlavaForConditionalGeneration(llava_config(model, feature_layer, strategy, act, tied, dtype))
    _same_class(llava.model.vision_tower, tower, f"the vision tower {model.vision_tower.source!r}")
    _same_class(llava.model.language_model, base, "the language model")
    _load_part(llava.model.vision_tower, tower.state_dict(), dtype, f"the vision tower {model.vision_tower.source!r}")
    _load_part(llava.model.multi_modal_projector, projector, dtype, "the connector")
    _load_part(llava.model.language_model, base.state_dict(), dtype, "the language model")
    _attach_head(llava, head, tied, dtype)
    on_meta = [name for name, tensor in llava.state_dict().items() if tensor.is_meta]
    if on_meta:
        raise ConfigError(f"llava export: no vlalign weight for {on_meta[:5]}")
    # transformers saves the hub layout (`vision_tower.vision_model.*`, `language_model.model.*`) only for models it
    # loaded itself: `_weight_conversions` is what from_pretrained records, and save_pretrained reverses it. Built
    # from a config, the model would be saved with its in-memory names (`vision_tower.embeddings.*`, CLIP's and
    # SigLIP's `vision_model.` dropped), which neither vLLM nor transformers 4.x loads.
    llava._weight_conversions = get_model_conversion_mapping(llava, add_legacy=False)
    generation = copy.deepcopy(language_model.generation_config)
    generation.pad_token_id = model.tokenizer.pad_token_id  # what vlalign's generate passes
    llava.generation_config = generation
    return llava.eval()


def check_saved_layout(folder, vision_type: str, vllm_vision_types: tuple[str, ...]) -> None:
    """The written weight names are the hub layout (for the CLIP/SigLIP towers that vLLM builds: every name)."""
    names = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            names.extend(handle.keys())
    prefixes = HUB_PREFIXES if vision_type in vllm_vision_types else HUB_PREFIXES[1:] + ("vision_tower.",)
    odd = [name for name in names if not name.startswith(prefixes)]
    if not names or odd:
        raise ConfigError(f"llava export: weights saved under names vLLM and transformers 4.x do not read: {odd[:5]} "
                          f"(expected prefixes {', '.join(prefixes)})")
