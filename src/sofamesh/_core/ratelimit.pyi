from typing import Any

from sofamesh._core.http_proxy import HttpFilter
from sofamesh._core.stats import Store

REGION_MAGIC: int
REGION_SLOTS: int

def monotonic() -> float: ...

class BucketRegion:
    fd: int
    nslots: int
    used: int
    overflows: int
    @staticmethod
    def create(nslots: int = ...) -> BucketRegion: ...
    @staticmethod
    def attach(fd: int) -> BucketRegion: ...
    def close(self) -> None: ...

def bucket_key(path: str, max_tokens: int, tokens_per_fill: int, interval_ns: int) -> int: ...
def share_buckets(region: BucketRegion | None) -> None: ...
def shared_region() -> BucketRegion | None: ...

class SharedCount:
    value: int
    mine: int
    shared: bool
    region: BucketRegion | None
    def __init__(self, key: str, worker: int = ..., region: BucketRegion | None = ...) -> None: ...
    def try_acquire(self, limit: int) -> bool: ...
    def acquire(self) -> int: ...
    def release(self) -> None: ...

class TokenBucket:
    max_tokens: float
    tokens_per_fill: float
    fill_interval: float
    available: float
    shared: bool
    region: BucketRegion | None
    def __init__(
        self,
        max_tokens: float,
        tokens_per_fill: float,
        fill_interval: float,
        now: float | None = None,
        region: BucketRegion | None = None,
        key: str | None = None,
    ) -> None: ...
    def try_consume(self, now: float | None = None) -> bool: ...
    def available_at(self, now: float | None = None) -> float: ...

class LocalRateLimit:
    bucket: TokenBucket | None
    status: int
    response_headers: tuple[tuple[bytes, bytes], ...]
    def __init__(
        self,
        store: Store,
        stat_prefix: str,
        bucket: TokenBucket | None,
        enabled_ppm: int,
        enforced_ppm: int,
        status: int = 429,
        response_headers: Any = (),
    ) -> None: ...
    @staticmethod
    def from_proto(msg: Any, store: Store, path: str = "") -> LocalRateLimit: ...

class LocalRateLimitFilter(HttpFilter):
    def __init__(
        self, default: LocalRateLimit, name: str = "envoy.filters.http.local_ratelimit"
    ) -> None: ...
