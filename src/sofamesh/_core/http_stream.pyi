from collections.abc import Iterable
from typing import Any

from sofamesh._core.hcm_config import HcmConfig
from sofamesh._core.headers import HeaderMap
from sofamesh._core.router import Route
from sofamesh._core.upstream import Cluster

class HttpStream:
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
    config: HcmConfig
    downstream_remote_address: tuple[str, int]
    def get_request_header(self, name: str | bytes) -> bytes | None: ...
    @property
    def request_head(self) -> HeaderMap: ...
    def request_headers(self) -> list[tuple[bytes, bytes]]: ...
    def add_request_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def remove_request_header(self, name: str | bytes) -> None: ...
    def add_response_header(self, name: str | bytes, value: str | bytes) -> None: ...
    def route_filter_config(self, name: str) -> Any: ...
    def send_local_reply(
        self,
        code: int,
        body: bytes | str = b"",
        headers: Iterable[tuple[Any, Any]] = (),
        flags: str = "",
    ) -> None: ...
    def continue_decoding(self) -> None: ...
    def busy(self) -> bool: ...
    def close(self) -> None: ...

class HttpFilter:
    name: str
    wants_data: bool
    wants_encode: bool
    def __init__(
        self, name: str = "", wants_data: bool = False, wants_encode: bool = False
    ) -> None: ...
    def decode_headers(self, s: HttpStream, end_stream: bool) -> int: ...
    def decode_data(self, s: HttpStream, data: bytes, end_stream: bool) -> int: ...
    def encode_headers(self, s: HttpStream, status: int, end_stream: bool) -> int: ...
    def encode_data(self, s: HttpStream, data: bytes, end_stream: bool) -> int: ...
