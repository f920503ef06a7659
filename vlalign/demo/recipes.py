"""The demo's objective runs as typed recipes: the stage-1 objectives, a model patch, and the named steps that
must run first (`label_patches`: SEA's offline labels; `demo_mae`: the X-Former's MAE; `query_pretrain`:
Q-Former / X-Former pre-training, after which stage 1 is the paper's LLM alignment).

Every run then trains the same stage 1 (connector) and stage 2 (instruction tuning, always generative, as
in every paper compared here), so the columns of the report differ by alignment only. The pre-steps are
implemented in vlalign.demo.prestep; this module is data only, so `vlalign --help` can list the recipes
without importing the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.demo.presets import MASK_RATIO, MAX_TEXT_LENGTH, NUM_QUERIES
from vlalign.errors import ConfigError

PRE_STEPS = ("label_patches", "demo_mae", "query_pretrain")  # in the order they may run


@dataclass(frozen=True)
class Recipe:
    name: str
    objectives: dict  # stage-1 objectives (query runs: the pre-training objectives)
    model: dict = field(default_factory=dict)  # patch of the model section, for every stage
    pre_steps: tuple[str, ...] = ()
    stage1_train: dict = field(default_factory=dict)  # patch of stage 1's train section (e.g. visual_token_drop)

    def __post_init__(self):
        unknown = [step for step in self.pre_steps if step not in PRE_STEPS]
        if unknown:
            raise ValueError(f"recipe {self.name!r}: unknown pre-steps {unknown}; known: {PRE_STEPS}")


GENERATIVE = {"generative": {"weight": 1.0}}
QUERY_CONNECTOR = {"num_queries": NUM_QUERIES, "max_text_length": MAX_TEXT_LENGTH}
XFORMER = {"connector": "xformer", "connector_options": {**QUERY_CONNECTOR, "mask_ratio": MASK_RATIO}}
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("generative", GENERATIVE),
    Recipe("generative+eos_contrastive", {**GENERATIVE, "eos_contrastive": {"weight": 1.0}}),
    Recipe("generative+eos_contrastive+prompt", {**GENERATIVE, "eos_contrastive": {"weight": 1.0, "prompt": True}}),
    Recipe("generative+cg_contrastive", {**GENERATIVE, "cg_contrastive": {"weight": 1.0}}),
    Recipe("generative+sea", {**GENERATIVE, "sea": {"weight": 1.0}}, pre_steps=("label_patches",)),
    # FLIP-style visual-token drop in stage 1 (the alignment survey's recommendation): half the visual tokens
    # of each image, drawn anew per sample and epoch; stage 2 and evaluation see all of them
    Recipe("generative+token_drop", GENERATIVE, stage1_train={"visual_token_drop": 0.5}),
    Recipe("qformer", {"qformer": {}}, model={"connector": "qformer", "connector_options": QUERY_CONNECTOR},
           pre_steps=("query_pretrain",)),
    Recipe("xformer", {"xformer": {}}, model=XFORMER, pre_steps=("demo_mae", "query_pretrain")),
    # ITM / ITG through BLIP-2's own passes instead of the MAE-fused final queries (which then get ITC and
    # reconstruction only): the other reading of X-Former's pre-training
    Recipe("xformer+blip2", {"xformer": {"itm_itg_queries": "blip2"}}, model=XFORMER,
           pre_steps=("demo_mae", "query_pretrain")),
)}
DEFAULT_RECIPES = ("generative",)


def resolve_objectives(names: list[str] | None) -> list[str]:
    """None -> the default run; ["all"] -> every recipe; else the names, checked."""
    if not names:
        return list(DEFAULT_RECIPES)
    if names == ["all"]:
        return list(RECIPES)
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown demo objective run(s) {unknown}; choose from: {', '.join(RECIPES)} or all")
    return names
