"""envoy.filters.network.tcp_proxy: opaque TCP to a cluster (HSF ports, anything else)."""

from __future__ import annotations

from typing import Any

from sofamesh._core.rpc_tcp import TcpProxyConfig
from sofamesh.filters.network._common import register_terminal, unpack
from sofamesh.proxy.errors import UnsupportedConfig

NAMES = ("envoy.filters.network.tcp_proxy", "envoy.tcp_proxy")
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def build(typed_config: Any, ctx: dict) -> TcpProxyConfig:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    cfg = tcp_proxy_pb2.TcpProxy()
    path = unpack(typed_config, cfg, ctx, "tcp_proxy")
    clusters = ctx["clusters"]
    which = cfg.WhichOneof("cluster_specifier")
    if which == "cluster":
        weighted = [(cfg.cluster, 1)]
    elif which == "weighted_clusters":
        weighted = [(c.name, c.weight) for c in cfg.weighted_clusters.clusters if c.weight > 0]
    else:
        raise UnsupportedConfig(f"{path}.typed_config: cluster or weighted_clusters is required")
    # A cluster that does not exist (yet) is not a config error, as in Envoy: each connection
    # looks it up (none: closed, downstream_cx_no_route, flag UH). Over xDS a listener often
    # arrives while its cluster still warms (waits for its endpoints).
    idle = 3600.0  # Envoy's default
    if cfg.HasField("idle_timeout"):
        idle = cfg.idle_timeout.seconds + cfg.idle_timeout.nanos / 1e9  # 0 disables
    access_logs = _access_logs(cfg, ctx, path)
    for field in (
        "hash_policy",
        "tunneling_config",
        "max_downstream_connection_duration",
        "on_demand",
        "metadata_match",
    ):
        fd = cfg.DESCRIPTOR.fields_by_name.get(field)
        if fd is None:
            continue
        present = len(getattr(cfg, field)) if fd.is_repeated else cfg.HasField(field)
        if present:
            raise UnsupportedConfig(f"{path}.typed_config.{field} is not supported")
    if cfg.HasField("max_connect_attempts") and cfg.max_connect_attempts.value > 1:
        raise UnsupportedConfig(
            f"{path}.typed_config.max_connect_attempts: one connect attempt is supported"
        )
    return TcpProxyConfig(
        cfg.stat_prefix,
        weighted,
        clusters,
        ctx["stats"],
        ctx["loop"],
        idle_timeout_s=idle,
        access_logs=access_logs,
    )


def _access_logs(cfg: Any, ctx: dict, path: str) -> tuple:
    """The `access_log` loggers (proxy/access_log_config): each closed connection's entry
    goes to them (`log_tcp`): file, stdout, stderr with their formats and filters, and
    envoy.access_loggers.tcp_grpc."""
    from sofamesh.proxy.access_log_config import build_access_logs

    logs, _ = build_access_logs(
        cfg.access_log, ctx.get("server"), f"{path}.typed_config", tcp=True, loop=ctx["loop"]
    )
    if logs is None:
        return ()
    return tuple(logs.loggers) if hasattr(logs, "loggers") else (logs,)


SPEC = register_terminal(NAMES, TYPE_URL, build)
