"""envoy.filters.http.local_ratelimit: token bucket rate limiting, Envoy's semantics.

Filter-level config applies to every request; `typed_per_filter_config` on a virtual host
or route replaces it there. Over the limit: 429 (or `status`), body `local_rate_limited`,
plus `response_headers_to_add`. Stats: `<stat_prefix>.http_local_rate_limit.{enabled,
enforced,rate_limited,ok}`.

With `--concurrency N` a bucket is shared by the N worker processes (a slot of the
`BucketRegion` the main process creates, keyed by the config path passed as `context["path"]`),
so the configured rate holds for the whole proxy, as in Envoy (`_core/ratelimit.pyx`).
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.local_ratelimit"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def _unpack(typed_config: Any, path: str) -> Any:
    from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

    from sofamesh.proxy.errors import UnsupportedConfig

    msg = local_rate_limit_pb2.LocalRateLimit()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    return msg


def compile_config(typed_config: Any, context: dict) -> Any:
    from sofamesh._core.ratelimit import LocalRateLimit

    path = context.get("path", "")
    return LocalRateLimit.from_proto(_unpack(typed_config, path), context["stats"], path)


def factory(typed_config: Any, context: dict) -> Any:
    from sofamesh._core.ratelimit import LocalRateLimitFilter

    return LocalRateLimitFilter(compile_config(typed_config, context), context.get("name") or NAME)


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_config},
    )
)
