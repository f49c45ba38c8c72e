from typing import Any

from sofamesh._core.stats import Counter

NO_ROUTING: int
DIRECT: int
RESIDUAL: int
ANY: int
FAIL: int

class ZoneRouting:
    routing_enabled: int
    fail_on_panic: bool
    state: int
    local_percent: int
    n: int
    localities: tuple[Any, ...]
    local_panic: bool
    all_directly: Counter | None
    sampled: Counter | None
    cross_zone: Counter | None
    local_not_ok: Counter | None
    no_capacity_left: Counter | None
    def __init__(self, routing_enabled: int = 100, fail_on_panic: bool = False) -> None: ...
    def install(
        self,
        state: int,
        local_percent: int,
        residual: list[int],
        localities: tuple[Any, ...],
        local_panic: bool,
    ) -> None: ...
    def residual_capacity(self) -> list[int]: ...
    def pick(self) -> int: ...
