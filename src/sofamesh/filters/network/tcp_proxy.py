"""envoy.filters.network.tcp_proxy: opaque TCP to a cluster (HSF ports, anything else)."""

from __future__ import annotations

import re
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
    if cfg.HasField("tunneling_config"):
        from sofamesh._core.tcp_tunnel import TunnelConfig

        parts, use_post, post_path = _tunneling(cfg.tunneling_config, f"{path}.typed_config")
        return TunnelConfig(
            cfg.stat_prefix,
            weighted,
            clusters,
            ctx["stats"],
            ctx["loop"],
            parts,
            use_post,
            post_path,
            idle_timeout_s=idle,
            access_logs=access_logs,
        )
    return TcpProxyConfig(
        cfg.stat_prefix,
        weighted,
        clusters,
        ctx["stats"],
        ctx["loop"],
        idle_timeout_s=idle,
        access_logs=access_logs,
        listener_stat_name=ctx.get("stat_name"),
    )


# the command operators a tunnel's hostname and headers_to_add may use (per connection)
_TUNNEL_OPS = ("DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_PORT", "DOWNSTREAM_REMOTE_ADDRESS")


def _tunnel_format(value: str, path: str) -> list:
    """A format string as parts: bytes literals and operator names (_TUNNEL_OPS)."""
    out: list = []
    pos = 0
    for m in re.finditer(r"%%|%([A-Z_]+)(\([^)]*\))?%", value):
        if m.start() > pos:
            out.append(value[pos : m.start()].encode("latin-1"))
        pos = m.end()
        if m.group(0) == "%%":
            out.append(b"%")
        elif m.group(1) in _TUNNEL_OPS and not m.group(2):
            out.append(m.group(1))
        else:
            raise UnsupportedConfig(
                f"{path}: command operator {m.group(0)} is not implemented by sofamesh "
                f"(only {', '.join('%' + o + '%' for o in _TUNNEL_OPS)})"
            )
    if pos < len(value):
        out.append(value[pos:].encode("latin-1"))
    return out


def _tunneling(tc: Any, path: str) -> tuple:
    """TunnelingConfig -> (request_parts(transport) -> (authority, headers), use_post,
    post_path). The tunnel's request is built once per connection (here, in Python)."""
    from sofamesh.proxy.original_dst import local_address

    tpath = f"{path}.tunneling_config"
    for field in ("propagate_response_headers", "propagate_response_trailers"):
        if getattr(tc, field):
            raise UnsupportedConfig(f"{tpath}.{field} is not implemented by sofamesh")
    if tc.HasField("request_id_extension"):
        raise UnsupportedConfig(f"{tpath}.request_id_extension is not implemented by sofamesh")
    if tc.post_path and not tc.use_post:
        raise UnsupportedConfig(f"{tpath}.post_path: only with use_post (Envoy)")
    host = _tunnel_format(tc.hostname, f"{tpath}.hostname")
    headers = []
    for i, hv in enumerate(tc.headers_to_add):
        hpath = f"{tpath}.headers_to_add[{i}]"
        if hv.header.raw_value:
            raise UnsupportedConfig(f"{hpath}.header.raw_value is not implemented by sofamesh")
        headers.append(
            (hv.header.key.lower().encode("latin-1"), _tunnel_format(hv.header.value, hpath))
        )

    def render(parts: list, local: Any, remote: Any) -> bytes:
        out = []
        for p in parts:
            if isinstance(p, bytes):
                out.append(p)
            elif p == "DOWNSTREAM_LOCAL_ADDRESS":
                out.append(_addr(local))
            elif p == "DOWNSTREAM_LOCAL_PORT":
                out.append(str(local[1]).encode() if local else b"")
            else:
                out.append(_addr(remote))
        return b"".join(out)

    def request_parts(transport: Any) -> tuple:
        local = local_address(transport)
        remote = transport.get_extra_info("peername")
        return render(host, local, remote), [(k, render(v, local, remote)) for k, v in headers]

    return request_parts, tc.use_post, (tc.post_path or "/").encode("latin-1")


def _addr(a: Any) -> bytes:
    if not a:
        return b""
    ip, port = a[0], a[1]
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()


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
