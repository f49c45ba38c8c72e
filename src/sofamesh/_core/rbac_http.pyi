from sofamesh._core.http_stream import HttpFilter
from sofamesh._core.rbac import RbacPolicies, RbacRequest
from sofamesh._core.stats import Store

class HttpRbacRequest(RbacRequest): ...

class RbacFilter(HttpFilter):
    policies: RbacPolicies
    def __init__(
        self,
        policies: RbacPolicies,
        store: Store,
        stat_prefix: str,
        rules_stat_prefix: str = ...,
        shadow_rules_stat_prefix: str = ...,
        name: str = ...,
    ) -> None: ...
