"""The code files of a remote-code export, assembled from vlalign's own module sources at export time.

Why assembled and not a hand-kept copy: two copies of a connector's forward or of the image transform drift
apart silently. Here the written modeling_vlalign.py and image_processing_vlalign.py carry the classes and
functions vlalign itself runs (taken with `inspect.getsource` + `ast`, vlalign's imports replaced by the
template's header), so a change to vlalign's model code reaches the next export by itself, and the round-trip
tests (tests/test_export_remote_code.py: logits to 1e-4, identical greedy tokens) catch what the assembly
misses. Only what has to differ lives in remote_code_templates/: the transformers classes, and constructors
that in vlalign probe or load their sources (a tower's patch grid, the Q-Former's BERT), which cannot run
under transformers' meta-device initialisation; the export records those facts in config.json instead.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vlalign.data import image_files, images
from vlalign.errors import ConfigError
from vlalign.models import efficientnet_lite, mae_branch, query_former, vision, vlm
from vlalign.models.connectors import base as connector_base
from vlalign.models.connectors import patch, query

SOURCES_MARKER = "# @vlalign-sources"
REGISTRY_DECORATORS = ("register_connector",)
TEMPLATES = Path(__file__).parent / "remote_code_templates"  # shipped as package data (pyproject.toml)


@dataclass(frozen=True)
class Part:
    """One top-level definition of a vlalign module, optionally trimmed to some of its methods."""

    module: ModuleType
    name: str
    keep: tuple[str, ...] | None = None  # methods to keep (None: all); class attributes always stay
    drop: tuple[str, ...] = ()  # members to leave out
    header: str | None = None  # replaces the `class ...:` line (another name, other bases)
    append: str = ""  # lines added to the class body


MODELING_PARTS = (
    *(Part(efficientnet_lite, name) for name in ("_ARCH", "_STEM_CHS", "_HEAD_CHS", "_conv", "_DepthwiseSeparable",
                                                 "_InvertedResidual", "EfficientNetLite0")),
    Part(connector_base, "ConnectorOutput"),
    Part(connector_base, "Connector"),
    *(Part(patch, name) for name in ("PatchConnector", "LinearConnector", "MLPConnector", "AvgPoolConnector")),
    *(Part(query_former, name) for name in ("MASK_MODES", "qformer_attention_mask", "Projections", "ResidualNorm",
                                            "AttentionBlock", "FeedForward", "QueryFormerLayer", "QueryFormer")),
    Part(query, "QFormerConnector", drop=("__init__", "tokenize"),
         append="    __init__ = exported_qformer_init  # vlalign's loads a BERT by name; see exported_qformer_init"),
    Part(mae_branch, "CrossBlock"),
    Part(mae_branch, "MaeBranch", drop=("__init__",),
         append="    __init__ = exported_mae_branch_init  # vlalign's loads the MAE by name; see there"),
    Part(query, "XFormerConnector", drop=("__init__",),
         append="    __init__ = exported_xformer_init"),
    Part(vision, "VisionTower"),
    Part(vision, "FeatureMapTower", keep=("_features", "forward")),
    Part(vision, "HFVisionTower", keep=("_hidden", "forward")),
    Part(vlm, "VisionLanguageModel", keep=("num_visual_tokens", "encode_images", "encode_images_with_aux", "embed"),
         header="class VisionLanguageSplice:  # VisionLanguageModel's splice, mixed into the transformers model"),
)
IMAGE_PROCESSING_PARTS = (
    *(Part(image_files, name) for name in ("DECODE_ERRORS", "_truncation_is_an_error", "ALPHA_MODES",
                                           "EXIF_ORIENTATION", "_greyscale_to_8bit", "rgb_or_rgba", "_decode", "load_image")),
    Part(images, "ImageTransform"))


def _member_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _span(node: ast.stmt, lines: list[str]) -> tuple[int, int]:
    """0-based [start, end) lines of a statement with its decorators and the comment lines right above it."""
    start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno]) - 1
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    return start, node.end_lineno


def _decorators(node: ast.ClassDef, source: str) -> list[str]:
    """The class's decorators (`@dataclass` stays) but for vlalign's registries, which the folder does not have."""
    kept = [d for d in node.decorator_list
            if not (isinstance(d, ast.Call) and getattr(d.func, "id", "") in REGISTRY_DECORATORS)]
    return [f"@{ast.get_source_segment(source, d)}" for d in kept]


def _class_source(part: Part, node: ast.ClassDef, source: str) -> list[str]:
    """The class statement and the members the part keeps."""
    lines = source.splitlines()
    body_start = _span(node.body[0], lines)[0]
    header = [part.header] if part.header else _decorators(node, source) + lines[node.lineno - 1:body_start]
    kept = []
    for member in node.body:
        name = _member_name(member)
        is_method = isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
        if name in part.drop or (is_method and part.keep is not None and name not in part.keep):
            continue
        start, end = _span(member, lines)
        kept.extend(([""] if is_method else []) + lines[start:end])
    return header + kept + (["", part.append] if part.append else [])


def part_source(part: Part) -> str:
    source = inspect.getsource(part.module)
    lines = source.splitlines()
    nodes = [n for n in ast.parse(source).body if _member_name(n) == part.name]
    if len(nodes) != 1:
        raise ConfigError(f"remote-code export: {part.module.__name__} no longer defines {part.name!r} at top level; "
                          f"update vlalign/export/remote_code_sources.py")
    node = nodes[0]
    if isinstance(node, ast.ClassDef):
        return "\n".join(_class_source(part, node, source))
    start, end = _span(node, lines)
    return "\n".join(lines[start:end])


def assemble(template_name: str, parts) -> str:
    """The template with its marker line replaced by the parts' sources, each headed by where it came from."""
    template = read_template(template_name)
    sections = [f"# --- vlalign source: {part.module.__name__}.{part.name}"
                f"{' (trimmed)' if part.keep or part.drop or part.header else ''}\n{part_source(part)}"
                for part in parts]
    text = template.replace(SOURCES_MARKER, "\n\n\n".join(sections), 1)
    _check_self_contained(template_name, text)
    return text


def _check_self_contained(name: str, text: str) -> None:
    for node in ast.walk(ast.parse(text)):
        modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(module == "vlalign" or module.startswith("vlalign.") for module in modules):
            raise ConfigError(f"remote-code export: the assembled {name} imports {modules}; it must not need vlalign")


def read_template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def code_files() -> dict[str, str]:
    """File name -> text of the four code files every remote-code export carries."""
    return {
        "configuration_vlalign.py": read_template("configuration_vlalign.py.tmpl"),
        "modeling_vlalign.py": assemble("modeling_vlalign.py.tmpl", MODELING_PARTS),
        "image_processing_vlalign.py": assemble("image_processing_vlalign.py.tmpl", IMAGE_PROCESSING_PARTS),
        "processing_vlalign.py": read_template("processing_vlalign.py.tmpl"),
    }
