from collections.abc import Iterable
from typing import Any

from sofamesh._core.codecs.http1 import Head

PATH_PREFIX: int
PATH_EXACT: int
PATH_REGEX: int
PATH_SEPARATED_PREFIX: int
PATH_CONNECT: int
S_EXACT: int
S_PREFIX: int
S_SUFFIX: int
S_CONTAINS: int
S_REGEX: int
S_PRESENT: int
S_RANGE: int
ACTION_CLUSTER: int
ACTION_WEIGHTED: int
ACTION_DIRECT: int
ACTION_REDIRECT: int
ACTION_PLUGIN: int
RETRY_ON: dict[str, int]

def random_u64() -> int: ...

class StringMatcher:
    def __init__(
        self,
        kind: int,
        value: str | bytes = b"",
        ignore_case: bool = False,
        lo: int = 0,
        hi: int = 0,
    ) -> None: ...
    def test(self, value: bytes) -> bool: ...

class HeaderMatcher:
    def __init__(
        self,
        name: str | bytes,
        sm: StringMatcher | None = None,
        present: bool = True,
        invert: bool = False,
    ) -> None: ...

class QueryMatcher:
    def __init__(self, name: str | bytes, sm: StringMatcher | None = None) -> None: ...

class Route:
    name: str
    action: int
    cluster: str | None
    prefix_rewrite: bytes | None
    host_rewrite: bytes | None
    timeout: float
    timeout_hdr: tuple[bytes, ...]
    retry_on: int
    num_retries: int
    retry_statuses: frozenset[int]
    status: int
    body: bytes
    req_add: tuple[bytes, ...]
    req_remove: frozenset[bytes]
    resp_add: tuple[bytes, ...]
    resp_remove: frozenset[bytes]
    filter_config: dict[str, Any]
    upgrades: frozenset[bytes]
    vhost_name: str
    mirrors: tuple[tuple[str, int, bool], ...]  # (cluster, share per million, no -shadow suffix)
    hash_headers: tuple[tuple[bytes, bool], ...]  # hash_policy headers (lower-case, terminal)
    plugin: Any  # ACTION_PLUGIN: proxy.lua_cluster.LuaClusterSpecifier, else None
    max_grpc_timeout: float  # RouteAction.max_grpc_timeout (s); -1: not set
    grpc_offset: float  # RouteAction.grpc_timeout_offset (s)
    attempt_count: bool  # VirtualHost.include_request_attempt_count
    attempt_count_resp: bool  # VirtualHost.include_attempt_count_in_response
    prev_hosts: int  # previous_hosts: re-choices of a retry's host; -1: no predicate
    def __init__(self, **kw: Any) -> None: ...
    def pick_cluster(self) -> str: ...

class VirtualHost:
    name: str
    def __init__(self, name: str, routes: Iterable[Route]) -> None: ...

class RouteTable:
    def __init__(
        self, vhosts: Iterable[tuple[list[str], VirtualHost]], strip_port: bool = False
    ) -> None: ...
    def select_host(self, host: str | bytes) -> VirtualHost | None: ...
    def match(self, h: Head) -> Route | None: ...
