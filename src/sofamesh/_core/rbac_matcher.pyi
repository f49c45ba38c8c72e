from collections.abc import Iterable

from sofamesh._core.rbac import RbacEngine, RbacRule

class MatcherEngine(RbacEngine):
    def __init__(
        self,
        matchers: Iterable[tuple[RbacRule, int, str]],
        default: tuple[int, str] | None = ...,
        header_names: Iterable[str] = ...,
    ) -> None: ...
