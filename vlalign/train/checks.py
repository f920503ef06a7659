"""Everything about a run config that can be checked without loading a weight, in about a second.

`load_config` (the bottom layer) validates each section's types; this adds what needs the registries:
objective options and unique term names, connector options, the sample layout the objectives' fields
need, and the cross-section rules objectives declare (`Objective.requires`). `train()` and `vlalign info`
run it first, so a wrong combination fails before a 7B LLM loads, not after.
"""

from __future__ import annotations

from vlalign.config import RunConfig
from vlalign.data.samples import resolve_layout
from vlalign.errors import ConfigError
from vlalign.models.connectors import connector_class, connector_options
from vlalign.objectives import Requires, merged_sample_fields, resolved_objectives
from vlalign.train.stages import resolve_tune


def check_config(config: RunConfig) -> None:
    resolved = resolved_objectives(config.objectives)
    connector_options(config.model.connector, config.model.connector_options)
    for name, (cls, _) in resolved.items():  # first: these errors name the objective and say why
        check_requires(name, cls.requires, config)
    resolve_layout(config.data.format, merged_sample_fields(config.objectives))


def check_requires(name: str, requires: Requires, config: RunConfig) -> None:
    """One objective's declared rules against the config; the first broken one is an error saying why."""
    why = f" ({requires.why})" if requires.why else ""
    if requires.data_format and config.data.format != requires.data_format:
        raise ConfigError(f"objective {name!r} needs data.format: {requires.data_format}, got "
                          f"{config.data.format!r}{why}")
    llm = resolve_tune(config.train.stage, config.train.tune)["llm"]
    if requires.frozen_llm and llm != "frozen":
        raise ConfigError(f"objective {name!r} needs a frozen LLM (train.tune.llm: frozen), but stage "
                          f"{config.train.stage} trains it ({llm}){why}")
    connector = config.model.connector
    if requires.connectors and connector not in requires.connectors:
        raise ConfigError(f"objective {name!r}: set model.connector: {' or '.join(requires.connectors)}, not "
                          f"{connector!r}{why}")
    kind = connector_class(connector).kind
    if requires.connector_kind and kind != requires.connector_kind:
        raise ConfigError(f"objective {name!r} needs a {requires.connector_kind} connector; model.connector "
                          f"{connector!r} is a {kind} connector{why}")
