"""Access loggers other than the core's file log, by typed_config type URL.

A logger module calls `register(type_url, factory)` at import (and registers the extension
with `config.support.register_extension`, so validation accepts it); the Server asks
`factory_for(type_url)` when it builds an HCM's `access_log`:
`factory(typed_config_any, loop, server, path)` returns an object with `log(stream,
duration_ms)`, `reopen()` and `close()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_FACTORIES: dict[str, Callable[..., Any]] = {}


def register(type_url: str, factory: Callable[..., Any]) -> None:
    _FACTORIES[type_url] = factory


def factory_for(type_url: str) -> Callable[..., Any] | None:
    from sofamesh.filters import registry

    registry._load_builtins()  # logger modules are listed with the built-in filters
    return _FACTORIES.get(type_url)
