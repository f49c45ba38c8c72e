from typing import Any

from sofamesh._core.conn_pool import ConnPool, PoolConn

class Http1ConnPool(ConnPool):
    def __init__(self, loop: Any) -> None: ...

class UpstreamConn(PoolConn):
    def close(self) -> None: ...

class ShadowConn: ...
