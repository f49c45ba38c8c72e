from collections.abc import Callable
from typing import Any

from sofamesh._core.rpc_tcp import TcpProxyConfig

class TunnelConfig(TcpProxyConfig):
    def __init__(
        self,
        stat_prefix: str,
        weighted: list,
        clusters: dict,
        store: Any,
        loop: Any,
        request_parts: Callable[[Any], tuple[bytes, list[tuple[bytes, bytes]]]],
        use_post: bool = ...,
        post_path: bytes = ...,
        connect_timeout: float = ...,
        idle_timeout_s: float = ...,
        access_logs: tuple = ...,
    ) -> None: ...
