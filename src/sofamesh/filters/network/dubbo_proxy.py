"""envoy.filters.network.dubbo_proxy: Envoy's DubboProxy config, proxied by the Cython core."""

from __future__ import annotations

from typing import Any

from sofamesh._core.rpc_proxy import PROTO_DUBBO, RpcProxyConfig
from sofamesh.filters.network._common import register_terminal, unpack
from sofamesh.filters.network.rbac import build_rpc_filters
from sofamesh.filters.network.rpc_quota import build_rpc_quota
from sofamesh.filters.network.rpc_routes import compile_routes
from sofamesh.proxy import rpc_tracing
from sofamesh.proxy.errors import UnsupportedConfig

NAMES = ("envoy.filters.network.dubbo_proxy",)
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"


def build(typed_config: Any, ctx: dict) -> RpcProxyConfig:
    from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2

    cfg = dubbo_proxy_pb2.DubboProxy()
    path = unpack(typed_config, cfg, ctx, "dubbo_proxy")
    if cfg.WhichOneof("route_specifier") == "drds":
        raise UnsupportedConfig(f"{path}.typed_config.drds: dynamic routes are not supported")
    rbac = build_rpc_filters(
        cfg.dubbo_filters,
        ("envoy.filters.dubbo.router",),
        ctx["stats"],
        f"{path}.typed_config.dubbo_filters",
    )
    routes = cfg.route_config
    if cfg.WhichOneof("route_specifier") == "multiple_route_config":
        routes = cfg.multiple_route_config.route_config
    table = compile_routes(routes, ctx["clusters"], f"{path}.typed_config")
    proxy = RpcProxyConfig(
        PROTO_DUBBO, cfg.stat_prefix, table, ctx["clusters"], ctx["stats"], ctx["loop"]
    )
    proxy.rbac = rbac
    proxy.tracing = rpc_tracing.build(
        cfg.dubbo_filters, ctx, PROTO_DUBBO, cfg.stat_prefix, f"{path}.typed_config.dubbo_filters"
    )
    proxy.quota = build_rpc_quota(
        cfg.dubbo_filters, ctx, f"dubbo.{cfg.stat_prefix}", f"{path}.typed_config.dubbo_filters"
    )
    return proxy


SPEC = register_terminal(NAMES, TYPE_URL, build, sniff="dubbo")
