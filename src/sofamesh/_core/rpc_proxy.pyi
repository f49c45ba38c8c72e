from typing import Any

PROTO_BOLT: int
PROTO_DUBBO: int
SM: dict[str, int]

class StrMatch:
    def __init__(self, kind: int, value: str = ..., ignore_case: bool = ...) -> None: ...

class HeaderMatch:
    def __init__(
        self, name: str, sm: StrMatch | None = ..., present: bool = ..., invert: bool = ...
    ) -> None: ...

class RpcRoute:
    def __init__(
        self,
        method: StrMatch | None,
        headers: list,
        cluster: str = ...,
        weighted: list | None = ...,
    ) -> None: ...

class RpcRouteConfig:
    def __init__(self, interface: str, group: str, version: str, routes: list) -> None: ...

class RpcRouteTable:
    def __init__(self, configs: list) -> None: ...
    def route_for_test(self, proto: int, frame: Any) -> str | None: ...

class RpcProxyConfig:
    proto: int
    stat_prefix: str
    table: RpcRouteTable
    clusters: dict
    loop: Any
    default_timeout: float
    max_frame: int
    conns_per_host: int
    draining: bool
    conns: set
    upstream_connections: int
    def __init__(
        self,
        proto: int,
        stat_prefix: str,
        table: RpcRouteTable,
        clusters: dict,
        store: Any,
        loop: Any,
        default_timeout: float = ...,
        max_frame: int = ...,
        conns_per_host: int = ...,
    ) -> None: ...
    def protocol_factory(self) -> Any: ...
    def close_all(self) -> None: ...
