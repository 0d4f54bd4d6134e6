"""Name -> component registries (students, attention modules, losses)."""
from __future__ import annotations

from typing import Any, Mapping

from utils.runtime.errors import ConfigError


def lookup(registry: Mapping[str, Any], name: str, kind: str, also: tuple[str, ...] = ()) -> Any:
    """registry[name], or a one-line error that lists the choices (`also`: valid names outside the registry)."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} '{name}'; choose from {', '.join([*also, *registry])}")
    return registry[name]
