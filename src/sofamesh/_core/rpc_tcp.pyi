from typing import Any

class TcpProxyConfig:
    stat_prefix: str
    clusters: dict
    weighted: list
    loop: Any
    connect_timeout: float
    conns: set
    draining: bool
    idle_timeout_s: float
    access_logs: tuple
    conn_state: Any
    def __init__(
        self,
        stat_prefix: str,
        weighted: list,
        clusters: dict,
        store: Any,
        loop: Any,
        connect_timeout: float = ...,
        idle_timeout_s: float = ...,
        access_logs: tuple = ...,
        listener_stat_name: str | None = ...,
    ) -> None: ...
    def protocol_factory(self) -> Any: ...
    def adopt(self, ds_sock: Any, up_sock: Any, cluster: str, host: tuple) -> bool: ...
    def close_all(self) -> None: ...
