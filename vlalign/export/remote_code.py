"""`vlalign export --format remote-code`: a transformers folder that carries its own modeling code.

For what transformers' Llava cannot express: the packaged EfficientNet-Lite0 tower read at an intermediate
stage (`model.vision_feature_stage`), patch connectors with pool / merge / norm, `avgpool`, `qformer` and
`xformer` (its frozen MAE travels in the folder: vlalign's checkpoints leave it out, an export cannot).
The folder loads without vlalign:

    AutoModelForImageTextToText.from_pretrained(OUT, trust_remote_code=True)   # VlalignForConditionalGeneration
    AutoProcessor.from_pretrained(OUT, trust_remote_code=True)                 # VlalignProcessor

AutoModelForImageTextToText because that is transformers' auto class for image + text in, text out with
`generate` (Llava, Idefics, Qwen2-VL register there). What is written: config.json (auto_map, the LLM's own
config as `text_config`, the tower's facts and the connector's options), model.safetensors in the layout
transformers saves (LoRA merged into the LLM, a standard AutoModelForCausalLM as `language_model`),
generation_config.json, the tokenizer with `<image>`, the chat template of the training format, the
processor config, and the code (configuration_/modeling_/image_processing_/processing_vlalign.py, built from
vlalign's own sources: see remote_code_sources.py).

Refused with a ConfigError naming the part: timm towers (the folder would need timm and that model's code)
and connectors outside vlalign's built-ins.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import MODEL_MAPPING
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from vlalign import __version__
from vlalign.config import ModelConfig, RunConfig, load_config
from vlalign.data.build import read_chat_template
from vlalign.errors import ConfigError
from vlalign.export.common import check_out_folder
from vlalign.export.remote_code_sources import code_files, read_template
from vlalign.files import write_folder_atomically
from vlalign.models.connectors import connector_options
from vlalign.models.efficientnet_lite import EfficientNetLite0
from vlalign.models.sources import parse_source
from vlalign.models.vision import FeatureMapTower, HFVisionTower
from vlalign.train.load import load_checkpoint_model, resolve_checkpoint

MODEL_TYPE = "vlalign"  # config.json's model_type (configuration_vlalign.py.tmpl)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXPORTABLE_CONNECTORS = ("linear", "mlp2x_gelu", "avgpool", "qformer", "xformer")
AUTO_MAP = {"AutoConfig": "configuration_vlalign.VlalignConfig",
            "AutoModelForImageTextToText": "modeling_vlalign.VlalignForConditionalGeneration"}
WRITTEN_CLASSES = {"model": "modeling_vlalign.VlalignForConditionalGeneration",
                   "image_processor": "image_processing_vlalign.VlalignImageProcessor",
                   "processor": "processing_vlalign.VlalignProcessor"}
# What vlalign's tower measured when it was built; the written tower class reads these instead of probing.
TOWER_FACTS = ("source", "hidden_size", "grid", "num_prefix_tokens", "_prefix_in_model", "image_size",
               "image_mean", "image_std", "select", "stage", "feature_layer")
MAE_STATISTICS = ("tower_mean", "tower_std", "mae_mean", "mae_std")  # MaeBranch's non-persistent buffers
# The stage-1 `plain` layout as a chat template: the user's image and text, nothing else (vlalign.data.templates).
PLAIN_TEMPLATE = ("{%- for message in messages %}{%- if message['role'] == 'user' %}{{ message['content'] }}"
                  "{%- endif %}{%- endfor %}")


def export_remote_code(checkpoint: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """Write the remote-code folder for a vlalign checkpoint (a stage folder or a checkpoint folder) to `out`
    (replaced atomically); `dtype`: bf16, fp16 or fp32 (None: as trained, fp32). Returns `out`."""
    folder = resolve_checkpoint(checkpoint)
    check_out_folder(Path(out), folder, MODEL_TYPE)
    check_remote_code_exportable(load_config(folder / "config.yaml").model)  # before any weights load
    torch_dtype = _torch_dtype(dtype)
    model, config = load_checkpoint_model(folder, device="cpu")
    merged = merge_lora(model.language_model)
    fields = config_fields(model, config, merged, torch_dtype)
    chat_template = exported_chat_template(model, config)
    texts = {**code_files(), "README.md": model_card(Path(out).name, fields)}
    return write_folder_atomically(Path(out), lambda staging: _write(staging, model, config, fields, texts,
                                                                     chat_template, torch_dtype))


def _torch_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"export --dtype {dtype!r}: one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_remote_code_exportable(model: ModelConfig) -> None:
    """A ConfigError naming the part that a remote-code folder cannot carry, and why."""
    source = parse_source(model.vision_tower)
    if source.kind == "timm":
        raise ConfigError(f"remote-code export: vision tower {model.vision_tower!r} is a timm model; the folder would "
                          f"need timm and that model's code, which it does not carry. Exportable towers: the "
                          f"packaged 'efficientnet-lite0' and Hugging Face vision models (CLIP, SigLIP, any AutoModel)")
    if source.kind not in ("packaged-vision", "hf"):
        raise ConfigError(f"remote-code export: vision tower {model.vision_tower!r} ({source.kind}) cannot be exported")
    if model.connector not in EXPORTABLE_CONNECTORS:
        raise ConfigError(f"remote-code export: connector {model.connector!r} has no code the folder could carry; "
                          f"exportable connectors: {', '.join(EXPORTABLE_CONNECTORS)}")


def merge_lora(language_model: torch.nn.Module) -> int:
    """Fold every LoRA layer into its base weight and put the plain layer back; returns how many were merged."""
    merged = 0
    for name, module in list(language_model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(language_model.get_submodule(parent), child, module.get_base_layer())
            merged += 1
    return merged


def _tower_config(tower) -> tuple[str, dict | None]:
    """The tower's kind and, for an HF tower, its backbone config (AutoModel must rebuild the same class)."""
    if isinstance(tower, FeatureMapTower) and isinstance(tower.model, EfficientNetLite0):
        return "efficientnet-lite0", None
    if isinstance(tower, HFVisionTower):
        backbone_config = tower.model.config
        rebuilt = MODEL_MAPPING[type(backbone_config)] if type(backbone_config) in MODEL_MAPPING else None
        if rebuilt is not type(tower.model):
            raise ConfigError(f"remote-code export: vision tower {tower.source!r} is a {type(tower.model).__name__}, "
                              f"which AutoModel does not build from its config ({type(backbone_config).__name__})")
        return "hf", _plain_config(backbone_config)
    raise ConfigError(f"remote-code export: vision tower {tower.source!r} ({type(tower.model).__name__}) is neither "
                      f"the packaged EfficientNet-Lite0 nor a Hugging Face vision model")


def _plain_config(hf_config, dtype: torch.dtype | None = None) -> dict:
    values = hf_config.to_dict()
    values.pop("_name_or_path", None)  # a local cache path of the machine that trained
    if dtype is not None:
        values["dtype"] = str(dtype).removeprefix("torch.")
    return values


def _connector_facts(connector) -> dict | None:
    """What a query connector reads from its sources in vlalign: the Q-Former's shapes (from its BERT) and, for
    the X-Former, the MAE's config and the pixel statistics of the tower and the MAE."""
    former = getattr(connector, "former", None)
    if former is None:
        return None
    layer = former.layer[0]
    facts = {"vocab_size": former.word_embeddings.num_embeddings, "hidden": former.hidden_size,
             "layers": len(former.layer), "heads": layer.attention.heads,
             "intermediate": layer.text_ffn.intermediate[0].out_features,
             "max_positions": former.position_embeddings.num_embeddings, "eps": former.embed_norm.eps}
    branch = getattr(connector, "mae_branch", None)
    if branch is not None:
        facts["mae_branch"] = {"mae_config": _plain_config(branch.mae.config),
                               **{name: getattr(branch, name).flatten().tolist() for name in MAE_STATISTICS}}
    return facts


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def config_fields(model, config: RunConfig, lora_merged: int, dtype: torch.dtype | None) -> dict:
    """The keyword arguments of the written VlalignConfig."""
    tower = model.vision_tower
    kind, vision_config = _tower_config(tower)
    return {
        "text_config": _plain_config(model.language_model.config, dtype),
        "vision_config": vision_config,
        "vision_tower_kind": kind,
        "vision_tower_facts": {name: _jsonable(getattr(tower, name)) for name in TOWER_FACTS if hasattr(tower, name)},
        "connector": config.model.connector,
        "connector_options": connector_options(config.model.connector, config.model.connector_options).model_dump(),
        "connector_facts": _connector_facts(model.multi_modal_projector),
        "image_token_index": model.image_token_id,
        "image_seq_length": model.num_visual_tokens,
        "vlalign_export": {"vlalign_version": __version__, "stage": config.train.stage, "format": config.data.format,
                           "vision_tower": config.model.vision_tower, "llm": config.model.llm,
                           "lora_layers_merged": lora_merged},
    }


def _jinja_literal(value: str | None) -> str:
    # Jinja reads a double-quoted string with Python's escapes; JSON's are a subset of those.
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def exported_chat_template(model, config: RunConfig) -> str:
    """The training format's chat template behind a prelude that turns image/text parts into vlalign's layout
    (`<image>\\n` + text for chat, `<image>` + text for plain) and adds the training system prompt."""
    image_token = config.model.image_token
    if config.data.format == "plain":
        body, system, image_text = PLAIN_TEMPLATE, None, image_token
    else:
        body = read_chat_template(config.data.chat_template) or model.tokenizer.chat_template
        system, image_text = config.data.system_prompt, image_token + "\n"
        if not isinstance(body, str):
            raise ConfigError("remote-code export: the tokenizer has no single chat template (set data.chat_template)")
    prelude = read_template("chat_template_prelude.jinja").rstrip("\n")
    prelude = prelude.replace("__VLALIGN_SYSTEM__", _jinja_literal(system))
    return prelude.replace("__VLALIGN_IMAGE_TEXT__", _jinja_literal(image_text)) + body


MODEL_CARD = """# {name}

A vision-language model trained with vlalign {version} (stage {stage}, `{format}` format: vision tower
`{tower}`, connector `{connector}`, LLM `{llm}`), written by `vlalign export --format remote-code`. It loads
with transformers alone; the model code is in this folder (`modeling_vlalign.py`, assembled from vlalign's own
sources), so pass `trust_remote_code=True`:

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained("{name}", trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in the image?"}}]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(images=Image.open("image.png"), text=text, return_tensors="pt")
new_tokens = model.generate(**inputs, max_new_tokens=64)[0, inputs["input_ids"].shape[1]:]
print(processor.decode(new_tokens, skip_special_tokens=True))
```

Each `<image>` stands for {tokens} visual tokens; the processor expands it. Batched prompts of different
lengths need `padding=True` and a left-padding tokenizer (`processor.tokenizer.padding_side = "left"`).
"""


def model_card(name: str, fields: dict) -> str:
    about = fields["vlalign_export"]
    return MODEL_CARD.format(name=name, version=about["vlalign_version"], stage=about["stage"],
                             format=about["format"], tower=about["vision_tower"], connector=fields["connector"],
                             llm=about["llm"], tokens=fields["image_seq_length"])


def _write(staging: Path, model, config: RunConfig, fields: dict, texts: dict[str, str], chat_template: str,
           dtype) -> None:
    for name, text in texts.items():
        (staging / name).write_text(text, encoding="utf-8")
    # The classes are imported from the files just written, as a user's transformers will import them: a
    # mistake in the assembled code fails here, and the weights and processor are saved by transformers itself.
    classes = {key: get_class_from_dynamic_module(reference, str(staging))
               for key, reference in WRITTEN_CLASSES.items()}
    # The config class the model module itself imported (transformers caches each written file on its own).
    exported = exported_model(classes["model"], classes["model"].config_class(**fields), model, dtype)
    exported.save_pretrained(staging, max_shard_size="5GB")
    exported_processor(classes, model, config, fields, chat_template).save_pretrained(staging)


def exported_model(model_class, exported_config, model, dtype: torch.dtype | None):
    """The written model class holding vlalign's (merged) weights: built on the meta device, then given the
    tensors themselves, so no second copy of the weights is made before saving."""
    with torch.device("meta"):
        exported = model_class(exported_config)
    exported.load_state_dict(model.state_dict(), strict=True, assign=True)
    exported.tie_weights()  # the LLM's tied head and embeddings share one tensor again
    if dtype is not None:
        exported.to(dtype)
        exported.config.dtype = dtype
    exported.config.auto_map = dict(AUTO_MAP)
    generation = copy.deepcopy(model.language_model.generation_config)
    generation.pad_token_id = model.tokenizer.pad_token_id  # what vlalign's generate passes
    exported.generation_config = generation
    return exported.eval()


def exported_processor(classes: dict, model, config: RunConfig, fields: dict, chat_template: str):
    tower = model.vision_tower
    image_processor = classes["image_processor"](
        image_size=tower.image_size, image_mean=list(tower.image_mean), image_std=list(tower.image_std),
        image_aspect=config.model.image_aspect)
    image_processor.register_for_auto_class("AutoImageProcessor")
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.chat_template = chat_template  # the same file as the processor's (chat_template.jinja)
    processor = classes["processor"](image_processor, tokenizer, chat_template=chat_template,
                                     image_token=config.model.image_token,
                                     image_seq_length=fields["image_seq_length"],
                                     add_special_tokens=config.data.format == "plain")
    processor.register_for_auto_class("AutoProcessor")
    return processor
