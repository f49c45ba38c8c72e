from typing import Any

from sofamesh._core.rpc_routes import RpcRouteTable

PROTO_BOLT: int
PROTO_DUBBO: int

class RpcProxyConfig:
    rbac: Any  # _core.rbac.NetworkRbac-style checker of calls, or None
    proto: int
    stat_prefix: str
    table: RpcRouteTable
    reap_interval: float
    upstream_paused: int
    clusters: dict
    loop: Any
    default_timeout: float
    max_frame: int
    conns_per_host: int
    draining: bool
    tracing: Any  # rpc_tracing.RpcTracing | None
    quota: Any  # rpc_quota.RpcQuota | None
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
