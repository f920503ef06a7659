"""Objective registry. Importing this package registers every built-in objective."""

from vlalign.objectives import contrastive  # noqa: F401  (registers "eos_contrastive", "cg_contrastive")
from vlalign.objectives import generative  # noqa: F401  (registers "generative")
from vlalign.objectives import qformer  # noqa: F401  (registers "qformer", "xformer")
from vlalign.objectives import sea  # noqa: F401  (registers "sea")
from vlalign.objectives.base import (OBJECTIVES, Objective, ObjectiveOptions, Requires, Terms, build_objectives,
                                     merged_forward_request, merged_sample_fields, objective_options,
                                     register_objective, resolved_objectives)

__all__ = ["OBJECTIVES", "Objective", "ObjectiveOptions", "Requires", "Terms", "build_objectives",
           "merged_forward_request", "merged_sample_fields", "objective_options", "register_objective",
           "resolved_objectives"]
