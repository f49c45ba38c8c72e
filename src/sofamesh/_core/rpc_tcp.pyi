from typing import Any

class TcpProxyConfig:
    stat_prefix: str
    clusters: dict
    weighted: list
    loop: Any
    connect_timeout: float
    conns: set
    draining: bool
    def __init__(self, stat_prefix: str, weighted: list, clusters: dict, store: Any, loop: Any,
                 connect_timeout: float = ...) -> None: ...
    def protocol_factory(self) -> Any: ...
    def close_all(self) -> None: ...
