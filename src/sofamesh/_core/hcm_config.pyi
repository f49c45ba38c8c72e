from collections.abc import Callable, Iterable
from typing import Any

from sofamesh._core.http_stream import HttpFilter
from sofamesh._core.router import RouteTable
from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster

def register_codec(name: str, factory: Callable[[HcmConfig], Any]) -> None: ...

class HcmConfig:
    scheme: bytes | None  # b"https" on a TLS filter chain (x-forwarded-proto)
    tracer: Any  # proxy.tracing.Tracer | None
    drain_timeout: float
    xfcc: int  # forward_client_cert_details (proxy/xfcc.py)
    xfcc_details: Any  # (transport) -> str | None
    loop: Any
    stat_prefix: str
    routes: RouteTable
    clusters: dict[str, Cluster]
    filters: tuple[HttpFilter, ...]
    draining: bool
    hand_over: Any
    conn_state: Any  # proxy.filter_state.ConnState | None
    decorate: int  # 0, 1 ingress, 2 egress: route decorator propagation (HCM tracing)
    overload_reject: bool
    overload_no_keepalive: bool
    request_headers_timeout: float
    conns: set[Any]
    access_log: Any
    def __init__(
        self,
        loop: Any,
        store: Store,
        stat_prefix: str,
        routes: RouteTable,
        clusters: dict[str, Cluster],
        filters: Iterable[HttpFilter] = (),
        *,
        use_remote_address: bool = False,
        generate_request_id: bool = True,
        accept_http_10: bool = False,
        max_head_bytes: int = 61440,
        max_headers: int = 100,
        buffer_limit: int = 1048576,
        upgrades: Iterable[bytes] = (),
        server_name: bytes = b"envoy",
        access_log: Any = None,
        listener_stat_name: str = "",
        idle_timeout: float = 3600.0,
        server_mode: int = 0,
        rid_in_response: bool = False,
        via: bytes = b"",
        skip_xff_append: bool = False,
        local_ip: bytes = b"127.0.0.1",
        preserve_external_request_id: bool = False,
        normalize_path: bool = False,
        merge_slashes: bool = False,
        strip_any_host_port: bool = False,
        request_timeout: float = 0.0,
        stream_idle_timeout: float = 0.0,
        reply_map: tuple | None = None,
        enable_trailers: bool = False,
        codec_type: int = 0,
        h2_options: dict | None = None,
    ) -> None: ...
    def protocol_factory(self) -> Any: ...
