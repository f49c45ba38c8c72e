"""Filters plug in by name, as in Envoy: one registry for HTTP, network and listener filters.

A filter module calls `register(...)` at import time; `sofamesh.filters.__init__` imports the
built-in filter modules (one line each). Config validation asks `lookup` whether a filter
named in a bootstrap is implemented; the proxy asks it for the factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("http", "network", "listener")


@dataclass(frozen=True)
class FilterSpec:
    kind: str  # "http" | "network" | "listener"
    names: tuple[str, ...]  # e.g. ("envoy.filters.http.local_ratelimit",)
    type_urls: tuple[str, ...]  # typed_config @type values accepted, full type.googleapis.com/...
    factory: Callable[..., Any]  # factory(config_message, context) -> filter factory/instance
    # Filters that Envoy has but whose effect sofamesh does not implement yet may register
    # as pass-through: accepted, counted, and reported by `--mode validate` as such.
    passthrough: bool = False
    extra: dict = field(default_factory=dict)


_BY_KEY: dict[tuple[str, str], FilterSpec] = {}


def register(spec: FilterSpec) -> FilterSpec:
    if spec.kind not in KINDS:
        raise ValueError(f"unknown filter kind {spec.kind!r}")
    for key in spec.names + spec.type_urls:
        prev = _BY_KEY.get((spec.kind, key))
        if prev is not None and prev is not spec:
            raise ValueError(f"{spec.kind} filter {key!r} registered twice")
        _BY_KEY[(spec.kind, key)] = spec
    return spec


def lookup(kind: str, name_or_type_url: str) -> FilterSpec | None:
    """The filter registered under a name or a typed_config type URL, or None."""
    _load_builtins()
    return _BY_KEY.get((kind, name_or_type_url))


def lookup_filter(kind: str, name: str, typed_config: Any = None) -> FilterSpec | None:
    """The filter a chain entry names: by its typed_config type URL, else by its name, else
    (for Istio's own filters, recognised by their config type) the Istio pass-through."""
    url = typed_config.type_url if typed_config is not None else ""
    spec = lookup(kind, url) if url else None
    if spec is None and url:
        from sofamesh.filters import istio

        if istio.istio_type(typed_config) is not None:
            return istio.implemented(kind, typed_config) or istio.SPECS[kind]
    return spec or lookup(kind, name)


def registered(kind: str) -> list[FilterSpec]:
    _load_builtins()
    seen: dict[int, FilterSpec] = {}
    for (k, _), spec in _BY_KEY.items():
        if k == kind:
            seen[id(spec)] = spec
    return list(seen.values())


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import sofamesh.filters  # noqa: F401  (imports the built-in filter modules)
