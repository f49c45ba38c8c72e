"""envoy.filters.network.http_connection_manager: the HTTP connection manager, one more
terminal network filter of the registry (proxy/server.py builds a chain's terminal filter
through the registry whatever its kind). It compiles the HCM proto once into an
`HcmConfig` (routes, HTTP filters, access log, timeouts, the codecs' settings); per-request
work is in sofamesh._core (http_proxy: HTTP/1.1, http2_server: HTTP/2)."""

from __future__ import annotations

import socket
from typing import Any

from sofamesh._core.http_proxy import HcmConfig, HttpFilter
from sofamesh.filters.network._common import register_terminal
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.http_options import dur, h2_options
from sofamesh.proxy.local_reply import compile_local_reply
from sofamesh.proxy.routes import compile_route_config

NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_NAMES = ("envoy.filters.http.router", "envoy.router")


def local_ip() -> str:
    """This host's primary IPv4 address, which Envoy appends to x-forwarded-for for a
    loopback peer: the source address of the default route (a UDP connect sends nothing)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def build(typed_config: Any, ctx: dict) -> HcmConfig:
    """The compiled HCM of one filter chain. ctx: the Server (`server`: its bootstrap,
    clusters, stats, loop, per-route filter configs and access logs), the `listener` proto,
    its `stat_name` and the filter's config `path`."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from sofamesh.filters import registry

    server, listener, stat_name, path = (
        ctx["server"],
        ctx["listener"],
        ctx["stat_name"],
        ctx["path"],
    )
    hcm = hcm_pb2.HttpConnectionManager()
    if not typed_config.Unpack(hcm):
        raise UnsupportedConfig(f"{path}.typed_config: expected HttpConnectionManager")
    spec_kind = hcm.WhichOneof("route_specifier")
    if spec_kind == "rds":
        # RDS: no routes (404) until sofamesh.proxy.dynamic swaps the table in; the
        # listener is not served before that (it warms), as in Envoy
        from sofamesh.xds.settings import source_spec, static_targets

        source_spec(
            hcm.rds.config_source,
            f"{path}.typed_config.rds.config_source",
            static_targets(server.bootstrap),
        )
        from envoy.config.route.v3 import route_pb2

        hcm.route_config.CopyFrom(route_pb2.RouteConfiguration(name=hcm.rds.route_config_name))
    elif spec_kind == "scoped_routes":
        # scoped RDS: sofamesh.proxy.dynamic merges the scopes' tables (xds/scoped.py)
        from sofamesh.xds.scoped import check_scoped_routes

        check_scoped_routes(hcm.scoped_routes, f"{path}.typed_config.scoped_routes")
        from envoy.config.route.v3 import route_pb2

        hcm.route_config.CopyFrom(route_pb2.RouteConfiguration(name=hcm.scoped_routes.name))
    elif spec_kind != "route_config":
        raise UnsupportedConfig(
            f"{path}.typed_config: only an inline route_config, rds or scoped_routes is supported"
        )
    if hcm.codec_type not in (0, 1, 2):  # AUTO, HTTP1, HTTP2
        raise UnsupportedConfig(f"{path}.typed_config.codec_type: HTTP/3 is not implemented")
    rc = hcm.route_config
    # validate_clusters: a static route config's cluster references are checked unless false
    check = not rc.HasField("validate_clusters") or rc.validate_clusters.value
    routes = compile_route_config(
        hcm.route_config,
        clusters=set(server.clusters) if check else None,
        per_filter=server._per_filter,
        path=f"{path}.typed_config.route_config",
        strip_port=hcm.strip_any_host_port,
        stats=server.stats,
    )
    filters: list[HttpFilter] = []
    n = len(hcm.http_filters)
    ctx = {
        "stats": server.stats,
        "loop": server._loop,
        "stat_prefix": hcm.stat_prefix,
        "clusters": server.clusters,  # live: gRPC clients (RLQS) find their service here
        "local_cluster": server.bootstrap.node.cluster,  # ratelimit's source_cluster
        "server": server,  # health_check: the proxy's health (admin /healthcheck/fail)
    }
    for i, hf in enumerate(hcm.http_filters):
        fpath = f"{path}.typed_config.http_filters[{i}]"
        if hf.name in ROUTER_NAMES or hf.typed_config.type_url.endswith(
            "envoy.extensions.filters.http.router.v3.Router"
        ):
            if i != n - 1:
                raise UnsupportedConfig(f"{fpath}: the router must be the last filter")
            continue
        spec = registry.lookup_filter(
            "http", hf.name, hf.typed_config if hf.HasField("typed_config") else None
        )
        if spec is None:
            if hf.is_optional:
                continue
            raise UnsupportedConfig(f"{fpath}: unknown HTTP filter {hf.name!r}")
        if spec.passthrough:
            continue
        filt = spec.factory(hf.typed_config, {**ctx, "path": fpath, "name": hf.name})
        if filt is not None:
            filters.append(filt)
    if n == 0 or not (
        hcm.http_filters[n - 1].name in ROUTER_NAMES
        or hcm.http_filters[n - 1].typed_config.type_url.endswith("Router")
    ):
        raise UnsupportedConfig(
            f"{path}.typed_config.http_filters: the last filter must be envoy.filters.http.router"
        )
    if hcm.add_user_agent.value:  # the connection manager's own header work, first
        from sofamesh.filters.http.hcm_user_agent import AddUserAgent

        filters.insert(0, AddUserAgent(server.bootstrap.node))
    access_log, capture = _access_logs(hcm, server, filters, f"{path}.typed_config")
    if capture:  # a format or filter reads the response: keep it (log_fields)
        from sofamesh._core.log_fields import ResponseCapture

        filters.insert(0, ResponseCapture())
    ups = [
        u.upgrade_type.encode()
        for u in hcm.upgrade_configs
        if not u.HasField("enabled") or u.enabled.value
    ]
    max_headers = 100
    if hcm.common_http_protocol_options.HasField("max_headers_count"):
        max_headers = hcm.common_http_protocol_options.max_headers_count.value
    idle_timeout = 3600.0  # Envoy's default for HTTP connections
    if hcm.common_http_protocol_options.HasField("idle_timeout"):
        idle_timeout = dur(hcm.common_http_protocol_options.idle_timeout)
    buffer_limit = 1024 * 1024
    if listener.HasField("per_connection_buffer_limit_bytes"):
        buffer_limit = listener.per_connection_buffer_limit_bytes.value
    cfg = HcmConfig(
        server._loop,
        server.stats,
        hcm.stat_prefix,
        routes,
        server.clusters,
        filters,
        use_remote_address=hcm.use_remote_address.value,
        generate_request_id=(
            hcm.generate_request_id.value if hcm.HasField("generate_request_id") else True
        ),
        accept_http_10=hcm.http_protocol_options.accept_http_10,
        enable_trailers=hcm.http_protocol_options.enable_trailers,
        codec_type=hcm.codec_type,
        h2_options=_h2_downstream(hcm, max_headers),
        max_head_bytes=(
            hcm.max_request_headers_kb.value * 1024
            if hcm.HasField("max_request_headers_kb")
            else 60 * 1024
        ),
        max_headers=max_headers,
        buffer_limit=buffer_limit,
        upgrades=ups,
        server_name=(hcm.server_name or "envoy").encode(),
        access_log=access_log,
        listener_stat_name=stat_name,
        idle_timeout=idle_timeout,
        request_timeout=dur(hcm.request_timeout) if hcm.HasField("request_timeout") else 0.0,
        stream_idle_timeout=(
            dur(hcm.stream_idle_timeout) if hcm.HasField("stream_idle_timeout") else 0.0
        ),
        reply_map=compile_local_reply(
            hcm.local_reply_config, f"{path}.typed_config.local_reply_config"
        ),
        server_mode=hcm.server_header_transformation,
        rid_in_response=hcm.always_set_request_id_in_response,
        via=hcm.via.encode(),
        skip_xff_append=hcm.skip_xff_append,
        local_ip=local_ip().encode(),
        preserve_external_request_id=hcm.preserve_external_request_id,
        normalize_path=hcm.normalize_path.value,
        merge_slashes=hcm.merge_slashes,
        strip_any_host_port=hcm.strip_any_host_port,
    )
    if hcm.HasField("drain_timeout"):
        cfg.drain_timeout = dur(hcm.drain_timeout)
    if hcm.forward_client_cert_details or hcm.HasField("set_current_client_cert_details"):
        from sofamesh.proxy.xfcc import configure

        configure(cfg, hcm, f"{path}.typed_config")
    if hcm.HasField("request_headers_timeout"):  # a head still partial that long: 408
        cfg.request_headers_timeout = dur(hcm.request_headers_timeout)
    if hcm.HasField("tracing"):
        from sofamesh.proxy import tracing

        # the route decorator's propagation, with or without a tracer (Envoy's)
        cfg.decorate = 2 if listener.traffic_direction == 2 else 1
        cfg.tracer = tracing.build(
            hcm.tracing,
            server,
            hcm.stat_prefix,
            local_ip(),
            f"{path}.typed_config.tracing",
            egress=listener.traffic_direction == 2,  # OUTBOUND: Envoy's egress spans
        )
        if cfg.tracer is not None:
            cfg.tracer.configure(cfg)
    return cfg


def _access_logs(hcm: Any, server: Any, filters: list, path: str) -> tuple[Any, bool]:
    """The HCM's access loggers (proxy/access_log_config) and whether they need the response
    kept. access_log_options' periodic and on-new-request logging are refused by name."""
    from sofamesh.proxy.access_log_config import build_access_logs

    if not hcm.access_log:
        return None, False
    opts = hcm.access_log_options
    if hcm.HasField("access_log_options"):
        if (
            opts.flush_access_log_on_new_request
            or opts.flush_log_on_tunnel_successfully_established
        ):
            raise UnsupportedConfig(
                f"{path}.access_log_options: flush_access_log_on_new_request and "
                "flush_log_on_tunnel_successfully_established are not implemented by sofamesh"
            )
        if opts.HasField("access_log_flush_interval"):
            raise UnsupportedConfig(
                f"{path}.access_log_options.access_log_flush_interval (periodic logging of "
                "long requests) is not implemented by sofamesh"
            )
    from sofamesh.filters.http.health_check import HealthCheckFilter

    hc_names = tuple(f.name for f in filters if isinstance(f, HealthCheckFilter))
    return build_access_logs(hcm.access_log, server, path, health_check_names=hc_names)


def _h2_downstream(hcm: Any, max_headers: int) -> dict:
    """The HTTP/2 codec's settings for this connection manager: http2_protocol_options,
    and the header limits it shares with HTTP/1 (max_request_headers_kb,
    max_headers_count)."""
    o = h2_options(hcm.http2_protocol_options)
    # Envoy 1.40's defaults, as its SETTINGS show them (not the 2^31-1 streams and 256 MiB
    # windows older documentation gives): 1024 streams, a 16 MiB stream window
    o.setdefault("max_concurrent_streams", 1024)
    o.setdefault("initial_stream_window_size", 16 * 1024 * 1024)
    o["max_headers_count"] = max_headers
    if hcm.http2_protocol_options.allow_connect:  # extended CONNECT (http2_server)
        o["allow_connect"] = True
    if hcm.HasField("max_request_headers_kb"):
        o["max_header_list_size"] = hcm.max_request_headers_kb.value * 1024
    return o


SPEC = register_terminal(NAMES, TYPE_URL, build, sniff="http")
