from collections.abc import Callable, Iterable
from typing import Any

from sofamesh._core.router import HeaderMatcher, StringMatcher
from sofamesh._core.stats import Store

ACTION_ALLOW: int
ACTION_DENY: int
ACTION_LOG: int
ADDRESS_DIRECT: int
ADDRESS_REMOTE: int
ADDRESS_LOCAL: int

class RbacRequest: ...
class RbacRule: ...
class AnyRule(RbacRule): ...

class NotRule(RbacRule):
    def __init__(self, inner: RbacRule) -> None: ...

class AndRule(RbacRule):
    def __init__(self, rules: Iterable[RbacRule]) -> None: ...

class OrRule(RbacRule):
    def __init__(self, rules: Iterable[RbacRule]) -> None: ...

class HeaderRule(RbacRule):
    name: bytes
    def __init__(self, hm: HeaderMatcher, each_value: bool = True) -> None: ...

class PathRule(RbacRule):
    def __init__(self, sm: StringMatcher) -> None: ...

class IpRule(RbacRule):
    def __init__(self, which: int, address: str, prefix_len: int) -> None: ...

class PortRule(RbacRule):
    def __init__(self, lo: int, hi: int) -> None: ...

class ServerNameRule(RbacRule):
    def __init__(self, sm: StringMatcher) -> None: ...

class AuthenticatedRule(RbacRule):
    def __init__(self, sm: StringMatcher | None = None) -> None: ...

class FilterStateRule(RbacRule):
    def __init__(self, key: str, sm: StringMatcher) -> None: ...

class MetadataRule(RbacRule):
    def __init__(self, mm: Any) -> None: ...

class RbacEngine:
    action: int
    names: tuple[str, ...]
    header_names: frozenset[str]
    def __init__(
        self,
        action: int,
        policies: Iterable[tuple[str, list[RbacRule], list[RbacRule]]],
        header_names: Iterable[str] = ...,
    ) -> None: ...
    def check(self, r: RbacRequest) -> tuple[bool, str | None]: ...

class RbacPolicies:
    engine: RbacEngine | None
    shadow: RbacEngine | None
    header_names: frozenset[str]
    def __init__(
        self, engine: RbacEngine | None = ..., shadow: RbacEngine | None = ...
    ) -> None: ...

class RbacStats:
    def __init__(self, store: Store, prefix: str, shadow_prefix: str) -> None: ...

class NetworkRbac:
    policies: RbacPolicies
    stat_prefix: str
    conn_state: Any
    def __init__(
        self, policies: RbacPolicies, store: Store, stat_prefix: str, shadow_stat_prefix: str = ...
    ) -> None: ...
    def wrap(self, factory: Callable[[], Any]) -> Callable[[], Any]: ...
    def check_transport(self, transport: Any) -> tuple[bool, str | None]: ...

class RbacGate:
    def __init__(self, cfg: NetworkRbac, inner: Any) -> None: ...
