"""sofamesh.filters.network.auto: one listener carrying HTTP/1.1, Bolt and Dubbo (MOSN's Auto).

The Auto message (proto/sofamesh/filters/network/auto/v1/auto.proto) lists ordinary network
filter configs; each connection goes to the one its first bytes name (see sniff.py).
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.network import _proto
from sofamesh.filters.network._common import register_terminal, unpack
from sofamesh.filters.network.sniff import Chain
from sofamesh.proxy.errors import UnsupportedConfig

NAMES = ("sofamesh.filters.network.auto",)
TYPE_URL = _proto.AUTO_TYPE_URL


def build(typed_config: Any, ctx: dict) -> Chain:
    cfg = _proto.Auto()
    path = unpack(typed_config, cfg, ctx, "auto")
    build_terminal = ctx.get("build_terminal")
    if build_terminal is None:
        raise UnsupportedConfig(f"{path}: the server cannot build nested filters")
    routes: dict[str, Any] = {}
    parts: list[Any] = []
    for i, f in enumerate(cfg.filters):
        fpath = f"{path}.typed_config.filters[{i}]"
        kind, built = build_terminal(f, fpath)
        if kind in routes:
            raise UnsupportedConfig(f"{fpath}: a second {kind} filter")
        routes[kind] = built.protocol_factory
        parts.append(built)
    if not parts:
        raise UnsupportedConfig(f"{path}.typed_config.filters: at least one filter is required")
    return Chain(parts, routes)


SPEC = register_terminal(NAMES, TYPE_URL, build, needs_server=True)
