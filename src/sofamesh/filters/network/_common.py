"""What every network filter module does the same way: unpack its typed_config (naming
the field on failure) and register itself as a terminal network filter."""

from __future__ import annotations

from typing import Any

from sofamesh.filters import registry
from sofamesh.proxy.errors import UnsupportedConfig


def unpack(typed_config: Any, msg: Any, ctx: dict, default_path: str) -> str:
    """Unpacks `typed_config` into the message `msg`; returns the config path for errors."""
    path = ctx.get("path", default_path)
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {msg.DESCRIPTOR.name}")
    return path


def register_terminal(
    names: tuple[str, ...], type_url: str, factory: Any, **extra: Any
) -> registry.FilterSpec:
    return registry.register(
        registry.FilterSpec(
            kind="network",
            names=names,
            type_urls=(type_url,),
            factory=factory,
            extra={"terminal": True, **extra},
        )
    )
