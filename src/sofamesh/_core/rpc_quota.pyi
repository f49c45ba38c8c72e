from collections.abc import Iterable
from typing import Any

from sofamesh._core.ratelimit import TokenBucket
from sofamesh._core.rlqs import RlqsFilter
from sofamesh._core.stats import Store

class RpcQuotaRule:
    match: Any
    bucket: TokenBucket | None
    rlqs: RlqsFilter | None
    def __init__(
        self, match: Any = None, bucket: TokenBucket | None = None, rlqs: RlqsFilter | None = None
    ) -> None: ...

class RpcQuotaStage:
    def __init__(
        self, rules: Iterable[RpcQuotaRule], store: Store, stat_prefix: str, kind: str
    ) -> None: ...

class RpcQuota:
    stages: tuple[RpcQuotaStage, ...]
    def __init__(self, stages: Iterable[RpcQuotaStage]) -> None: ...
