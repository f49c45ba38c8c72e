from collections.abc import Callable, Iterable
from typing import Any

class LuaRoute:
    default: str
    call: Any  # lupa function
    headers: Any  # headers.HeaderMap | None, while a request is routed
    clusters: dict[str, Any] | None
    lua: Any  # lupa LuaRuntime
    def __init__(
        self, default: str, names: Iterable[bytes], on_failure: Callable[[Any], None]
    ) -> None: ...
    def cluster(self, h: Any, clusters: dict[str, Any]) -> str: ...
