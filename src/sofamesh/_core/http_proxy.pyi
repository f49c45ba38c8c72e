import asyncio
from typing import Any, Iterable

from sofamesh._core.router import Route, RouteTable
from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster

FILTER_CONTINUE_: int
FILTER_STOP_: int
REASONS: dict[int, bytes]

class DownstreamConn(asyncio.Protocol):
    remote_ip: bytes
    route: Route | None
    cluster: Cluster | None
    resp_status: int
    resp_flags: str
    filter_state: dict | None
    request_id: bytes | None
    bytes_rx: int
    bytes_tx: int
    upstream_host: str
    service_ms: int
    method: bytes
    path: bytes
    authority: bytes
    protocol: str
    config: "HcmConfig"
    downstream_remote_address: tuple[str, int]
    def get_request_header(self, name: str | bytes) -> bytes | None: ...
    def request_headers(self) -> list[tuple[bytes, bytes]]: ...
    def add_request_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def remove_request_header(self, name: str | bytes) -> None: ...
    def add_response_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def route_filter_config(self, name: str) -> Any: ...
    def send_local_reply(self, code: int, body: bytes | str = b"",
                         headers: Iterable[tuple[Any, Any]] = (), flags: str = "") -> None: ...
    def continue_decoding(self) -> None: ...
    def busy(self) -> bool: ...
    def close(self) -> None: ...

class HttpFilter:
    name: str
    wants_data: bool
    wants_encode: bool
    def __init__(self, name: str = "", wants_data: bool = False,
                 wants_encode: bool = False) -> None: ...
    def decode_headers(self, s: DownstreamConn, end_stream: bool) -> int: ...
    def decode_data(self, s: DownstreamConn, data: bytes, end_stream: bool) -> int: ...
    def encode_headers(self, s: DownstreamConn, status: int, end_stream: bool) -> int: ...
    def encode_data(self, s: DownstreamConn, data: bytes, end_stream: bool) -> int: ...

class HcmConfig:
    loop: Any
    stat_prefix: str
    routes: RouteTable
    clusters: dict[str, Cluster]
    filters: tuple[HttpFilter, ...]
    draining: bool
    conns: set[DownstreamConn]
    access_log: Any
    def __init__(self, loop: Any, store: Store, stat_prefix: str, routes: RouteTable,
                 clusters: dict[str, Cluster], filters: Iterable[HttpFilter] = (), *,
                 use_remote_address: bool = False, generate_request_id: bool = True,
                 accept_http_10: bool = False, max_head_bytes: int = 61440,
                 max_headers: int = 100, buffer_limit: int = 1048576,
                 upgrades: Iterable[bytes] = (), server_name: bytes = b"envoy",
                 access_log: Any = None, listener_stat_name: str = "",
                 idle_timeout: float = 3600.0, server_mode: int = 0,
                 rid_in_response: bool = False, via: bytes = b"",
                 skip_xff_append: bool = False, local_ip: bytes = b"127.0.0.1",
                 preserve_external_request_id: bool = False, normalize_path: bool = False,
                 merge_slashes: bool = False, strip_any_host_port: bool = False,
                 request_timeout: float = 0.0, stream_idle_timeout: float = 0.0,
                 reply_map: tuple | None = None) -> None: ...
    def protocol_factory(self) -> DownstreamConn: ...

class UpstreamConn:
    def close(self) -> None: ...
