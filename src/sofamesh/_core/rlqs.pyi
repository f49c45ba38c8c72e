from collections.abc import Callable
from typing import Any

from sofamesh._core.http_proxy import HttpFilter
from sofamesh._core.ratelimit import TokenBucket

ACTION_ALLOW_ALL: int
ACTION_DENY_ALL: int
ACTION_TOKENS: int

class RlqsAction:
    kind: int
    bucket: TokenBucket | None
    def __init__(self, kind: int, bucket: TokenBucket | None = None) -> None: ...

class RlqsFilter(HttpFilter):
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    current_action: RlqsAction
    match: Any  # rbac rule selecting its requests, or None
    def __init__(
        self,
        name: str,
        action: RlqsAction,
        on_first: Callable[[], Any],
        status: int = 429,
        body: bytes = b"",
        headers: Any = (),
        match: Any = None,
    ) -> None: ...
    def set_action(self, action: RlqsAction) -> None: ...
    def take_usage(self) -> tuple[int, int]: ...
