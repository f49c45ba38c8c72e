from typing import Any

from sofamesh._core.http_proxy import HttpFilter
from sofamesh._core.stats import Store

def monotonic() -> float: ...

class TokenBucket:
    max_tokens: float
    tokens_per_fill: float
    fill_interval: float
    available: float
    def __init__(self, max_tokens: float, tokens_per_fill: float, fill_interval: float,
                 now: float | None = None) -> None: ...
    def try_consume(self, now: float | None = None) -> bool: ...

class LocalRateLimit:
    bucket: TokenBucket | None
    status: int
    response_headers: tuple[tuple[bytes, bytes], ...]
    def __init__(self, store: Store, stat_prefix: str, bucket: TokenBucket | None,
                 enabled_ppm: int, enforced_ppm: int, status: int = 429,
                 response_headers: Any = ()) -> None: ...
    @staticmethod
    def from_proto(msg: Any, store: Store, path: str = "") -> "LocalRateLimit": ...

class LocalRateLimitFilter(HttpFilter):
    def __init__(self, default: LocalRateLimit,
                 name: str = "envoy.filters.http.local_ratelimit") -> None: ...
