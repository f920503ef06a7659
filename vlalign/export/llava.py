"""`vlalign export --format llava`: a checkpoint -> a transformers `LlavaForConditionalGeneration` folder.

The folder loads with `LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` and no
other code, which is what vLLM's Llava loader, lmms-eval's `llava_hf` and the model hub read: config.json
(model_type llava, image_token_index, image_seq_length, vision_feature_layer, vision_feature_select_strategy,
projector_hidden_act, the tower's and the LLM's own configs), safetensors weights as the installed transformers
saves them (sharded above `max_shard_size`; LoRA merged into the LLM), the tokenizer with `<image>`, the chat
template of training (llava_prompt.py), the LlavaProcessor settings and generation_config.json.

Llava's model is fixed: a transformers vision tower read at one hidden layer with the CLS token dropped or kept, a
linear -> activation -> linear projector applied to every patch, the LLM. What fits: HF towers (CLIP, SigLIP, any
tower whose hidden states Llava selects the same way) with the `linear` or `mlp2x_gelu` connector without
pool/merge/norm options, images padded or stretched to a square. Everything else is refused with one line that names
the part and why, before any weight loads where the config alone tells, pointing to `--format remote-code`.

Before the folder is published it is loaded back (the processor) and compared with vlalign: the prompt ids of a
sample question and the pixels of sample images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlalign.config import RunConfig, load_config
from vlalign.errors import ConfigError
from vlalign.export.common import check_out_folder, folder_size, llava_refusal
from vlalign.export.llava_prompt import build_processor, check_export, save_processor
from vlalign.export.llava_weights import build_llava, check_saved_layout
from vlalign.files import write_folder_atomically
from vlalign.models.connectors import connector_options
from vlalign.models.sources import parse_source
from vlalign.models.vision import HFVisionTower
from vlalign.train.load import load_checkpoint_model, resolve_checkpoint
from vlalign.train.stages import merge_lora

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {value: key for key, value in DTYPES.items()}
LLAVA_CONNECTORS = ("linear", "mlp2x_gelu")
LLAVA_ASPECTS = ("pad", "resize")
DEFAULT_MAX_SHARD_SIZE = "5GB"  # llava-hf's own shards; vLLM and transformers read any size
VLLM_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")  # vLLM's init_vision_tower_for_llava (+ pixtral)
SOURCE_KINDS = {"packaged-vision": "vlalign's packaged EfficientNet-Lite0, a CNN", "timm": "a timm model"}


@dataclass
class LlavaExport:
    folder: Path
    seconds: float
    size_bytes: int
    files: int
    dtype: str
    merged_lora_layers: int
    notes: list[str] = field(default_factory=list)  # what a user of the export should know


def config_refusal(config: RunConfig) -> ConfigError | None:
    """Why the llava format cannot hold checkpoints of this run config, from the config alone (no weights)."""
    model = config.model
    kind = parse_source(model.vision_tower).kind
    if kind != "hf":
        return llava_refusal(f"the vision tower {model.vision_tower!r}",
                             f"it is {SOURCE_KINDS.get(kind, f'a {kind} source')}, not a transformers vision model "
                             f"that Llava builds from a config")
    if model.connector not in LLAVA_CONNECTORS:
        return llava_refusal(f"the connector {model.connector!r}",
                             "Llava's projector is linear -> activation -> linear on each patch token; only the "
                             "linear and mlp2x_gelu connectors map onto it")
    options = connector_options(model.connector, model.connector_options)
    defaults = type(options)()
    changed = sorted(name for name in type(options).model_fields if getattr(options, name) != getattr(defaults, name))
    if changed:
        return llava_refusal(f"model.connector_options {', '.join(changed)}",
                             "Llava's projector has no pooling, merging or input LayerNorm")
    if model.image_aspect not in LLAVA_ASPECTS:
        return llava_refusal(f"model.image_aspect {model.image_aspect!r}",
                             "vlalign crops the largest centred square and then resizes, Llava's image processors "
                             "resize the short side first and crop after, so the pixels differ")
    return None


def _hidden_prefix_tokens(tower: HFVisionTower) -> int:
    """CLS/register tokens in front of the patches in the tower's hidden states (CLIP 1, SigLIP 0)."""
    parameter = next(tower.model.parameters())
    pixels = torch.zeros(1, 3, tower.image_size, tower.image_size, dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        hidden = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states[tower.feature_layer]
    return hidden.shape[1] - tower.grid[0] * tower.grid[1]


def feature_selection(model) -> tuple[str, int]:
    """Llava's (vision_feature_select_strategy, num_additional_image_tokens) for vlalign's patch/full selection.

    Llava's `default` drops exactly one leading token and `full` keeps all, so vlalign's `patch` is `default` on a
    tower with one CLS token (CLIP) and `full` on a tower without (SigLIP, where `default` would drop a real patch)."""
    tower = model.vision_tower
    if not isinstance(tower, HFVisionTower):
        raise llava_refusal(f"the vision tower {tower.source!r}", "it is not a transformers vision model")
    size = tower.model.config.image_size
    if (size if isinstance(size, int) else size[0]) != tower.image_size:
        raise llava_refusal(f"model.image_size {tower.image_size}", f"the tower's config says {size} and Llava runs "
                                                                    f"the tower at that size")
    prefix = _hidden_prefix_tokens(tower)
    if tower.select == "full" or prefix == 0:
        strategy = "full"
    elif prefix == 1:
        strategy = "default"
    else:
        raise llava_refusal(f"model.vision_feature_select 'patch' on {tower.source!r}",
                            f"its hidden states start with {prefix} CLS/register tokens and Llava's 'default' "
                            f"strategy drops exactly one")
    placeholders = tower.grid[0] * tower.grid[1] + prefix - (1 if strategy == "default" else 0)
    if placeholders != model.num_visual_tokens:  # LlavaProcessor's count must be vlalign's one number
        raise ConfigError(f"llava export: the processor would expand <image> to {placeholders} tokens, the model "
                          f"has {model.num_visual_tokens} visual tokens")
    return strategy, prefix


def consumer_notes(llava_config, image_token: str) -> list[str]:
    """What vLLM (vllm/model_executor/models/llava.py) or lmms-eval's llava_hf will not handle although transformers
    does."""
    notes = []
    if image_token != "<image>":
        notes.append(f"model.image_token is {image_token!r}: lmms-eval's llava_hf and vLLM's string prompts insert "
                     f"'<image>', which this tokenizer does not treat as the image")
    vision_type = llava_config.vision_config.model_type
    if vision_type not in VLLM_VISION_TYPES:
        notes.append(f"vLLM's Llava loader builds CLIP, SigLIP and Pixtral vision towers only; this {vision_type} "
                     f"tower loads in transformers (and lmms-eval's llava_hf), not in vLLM")
    if llava_config.projector_hidden_act == "linear":
        notes.append("the linear connector is stored as linear_1 = W, identity ('linear'), linear_2 = I because the "
                     "LLM is less than twice as wide as the tower; vLLM has no identity activation and will not "
                     "load it")
    return notes


def readable_like_config(folder: Path) -> None:
    """transformers writes the safetensors shards through a private temporary file (mode 0600); give them the mode
    of config.json (the user's umask), so a server running as another user (vLLM in a container) can read them."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for shard in folder.glob("*.safetensors"):
        shard.chmod(mode)


def export_llava(checkpoint: str | Path, out: str | Path, *, dtype: str | None = None,
                 max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> LlavaExport:
    """Write `out` (replaced in one rename). `dtype`: bf16 | fp16 | fp32; None: the LLM's dtype as trained."""
    started = time.perf_counter()
    folder = resolve_checkpoint(checkpoint)
    check_out_folder(Path(out), folder, "llava")
    refusal = config_refusal(load_config(folder / "config.yaml"))
    if refusal is not None:
        raise refusal  # before any weight loads
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    model, config = load_checkpoint_model(folder, device="cpu")
    strategy, prefix = feature_selection(model)
    torch_dtype = DTYPES[dtype] if dtype else next(model.language_model.parameters()).dtype
    merged = merge_lora(model.language_model)
    llava = build_llava(model, config.model.vision_feature_layer, strategy, torch_dtype)
    processor = build_processor(model, config, strategy, prefix)
    notes = consumer_notes(llava.config, config.model.image_token)

    def write(staging: Path) -> None:
        llava.save_pretrained(staging, max_shard_size=max_shard_size)
        readable_like_config(staging)
        check_saved_layout(staging, llava.config.vision_config.model_type, VLLM_VISION_TYPES)
        save_processor(processor, staging)
        notes.extend(check_export(staging, model, config))  # before the folder is published

    target = write_folder_atomically(Path(out), write)
    size, files = folder_size(target)
    dtype_name = DTYPE_NAMES.get(torch_dtype, str(torch_dtype))
    return LlavaExport(target, time.perf_counter() - started, size, files, dtype_name, merged, notes)
