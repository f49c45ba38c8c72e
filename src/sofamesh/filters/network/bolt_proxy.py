"""sofamesh.filters.network.bolt_proxy: routes SOFA Bolt by service and method (BoltProxy)."""

from __future__ import annotations

from typing import Any

from sofamesh._core.rpc_proxy import PROTO_BOLT, RpcProxyConfig
from sofamesh.filters.network import _proto
from sofamesh.filters.network._common import register_terminal, unpack
from sofamesh.filters.network.rbac import build_rpc_filters
from sofamesh.filters.network.rpc_quota import build_rpc_quota
from sofamesh.filters.network.rpc_routes import compile_routes
from sofamesh.proxy import rpc_tracing

NAMES = ("sofamesh.filters.network.bolt_proxy",)
TYPE_URL = _proto.TYPE_URL


def build(typed_config: Any, ctx: dict) -> RpcProxyConfig:
    cfg = _proto.BoltProxy()
    path = unpack(typed_config, cfg, ctx, "bolt_proxy")
    rbac = build_rpc_filters(
        cfg.bolt_filters,
        ("sofamesh.filters.bolt.router",),
        ctx["stats"],
        f"{path}.typed_config.bolt_filters",
    )
    table = compile_routes(cfg.route_config, ctx["clusters"], f"{path}.typed_config")
    timeout = cfg.default_timeout_ms / 1000.0 if cfg.default_timeout_ms else 3.0
    proxy = RpcProxyConfig(
        PROTO_BOLT, cfg.stat_prefix, table, ctx["clusters"], ctx["stats"], ctx["loop"], timeout
    )
    proxy.rbac = rbac
    proxy.tracing = rpc_tracing.build(
        cfg.bolt_filters, ctx, PROTO_BOLT, cfg.stat_prefix, f"{path}.typed_config.bolt_filters"
    )
    proxy.quota = build_rpc_quota(
        cfg.bolt_filters, ctx, f"bolt.{cfg.stat_prefix}", f"{path}.typed_config.bolt_filters"
    )
    return proxy


SPEC = register_terminal(NAMES, TYPE_URL, build, sniff="bolt")
