"""Exact-name registries (objectives, connectors, sample layouts, sample fields): one rule for all of them,
a name registered twice is an error, never a silent replacement."""

from __future__ import annotations

from typing import Any, Callable


def add_unique(registry: dict[str, Any], kind: str, name: str, value: Any) -> None:
    if name in registry:
        raise ValueError(f"{kind} {name!r} registered twice")
    registry[name] = value


def class_registrar(registry: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    """`register = class_registrar(REGISTRY, "objective")`, then `@register("name")` on a class: the class is
    stored under `name` and learns it as `cls.name`."""
    def register(name: str):
        def wrap(cls: type) -> type:
            add_unique(registry, kind, name, cls)
            cls.name = name
            return cls
        return wrap
    return register
