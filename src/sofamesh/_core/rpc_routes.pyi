from typing import Any

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
    header_names: tuple[bytes, ...]
    def __init__(self, configs: list) -> None: ...
    def cluster_for(self, frame: Any) -> str | None: ...
