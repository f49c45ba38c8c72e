"""Quota filters for RPC calls (sofamesh.filters.rpc.local_ratelimit / rate_limit_quota in
dubbo_filters): what compiles, and what is refused by path when the proxy is built."""

from __future__ import annotations

import asyncio

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2  # noqa: F401
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401  (Any types in the configs)
from google.protobuf import json_format

from sofamesh._core.stats import Store
from sofamesh.filters.network.rpc_quota import build_rpc_quota
from sofamesh.proxy.errors import UnsupportedConfig

LOCAL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RLQ = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaFilterConfig"
)
BUCKET = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaBucketSettings"
)
TB = {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1s"}


def _filters(*configs: tuple[str, dict]):
    msg = json_format.ParseDict(
        {
            "stat_prefix": "d",
            "dubbo_filters": [
                *({"name": n, "config": c} for n, c in configs),
                {"name": "envoy.filters.dubbo.router"},
            ],
        },
        dubbo_proxy_pb2.DubboProxy(),
    )
    return msg.dubbo_filters


def _build(*configs):
    loop = asyncio.new_event_loop()
    try:
        return build_rpc_quota(
            _filters(*configs),
            {"stats": Store(), "clusters": {}, "loop": loop},
            "dubbo.d",
            "dubbo_filters",
        )
    finally:
        loop.close()


def _local(**kw) -> tuple[str, dict]:
    return ("sofamesh.filters.rpc.local_ratelimit", {"@type": LOCAL, "stat_prefix": "q", **kw})


def _rlqs(header: str) -> tuple[str, dict]:
    settings = {
        "@type": BUCKET,
        "bucket_id_builder": {"bucket_id_builder": {"service": {"string_value": "s"}}},
        "reporting_interval": "1s",
    }
    return (
        "sofamesh.filters.rpc.rate_limit_quota",
        {
            "@type": RLQ,
            "domain": "mesh",
            "rlqs_server": {"envoy_grpc": {"cluster_name": "mixer"}},
            "bucket_matchers": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "h",
                                        "typed_config": {
                                            "@type": "type.googleapis.com/envoy.type.matcher.v3"
                                            ".HttpRequestHeaderMatchInput",
                                            "header_name": header,
                                        },
                                    },
                                    "value_match": {"exact": "s"},
                                }
                            },
                            "on_match": {"action": {"name": "b", "typed_config": settings}},
                        }
                    ]
                }
            },
        },
    )


def test_no_quota_filter_is_no_quota():
    assert _build() is None


def test_descriptors_then_the_default_bucket_in_one_stage_and_rlqs_in_another():
    q = _build(
        _local(
            descriptors=[
                {
                    "entries": [{"key": "service", "value": "a"}, {"key": "method", "value": "m"}],
                    "token_bucket": TB,
                },
                {"entries": [{"key": "version", "value": "1.0"}], "token_bucket": TB},
            ],
            token_bucket=TB,
        ),
        _rlqs(":service"),
    )
    assert len(q.stages) == 2


@pytest.mark.parametrize(
    ("config", "where"),
    [
        (
            _local(
                descriptors=[{"entries": [{"key": "tenant", "value": "t"}], "token_bucket": TB}]
            ),
            "dubbo_filters[0].config.descriptors[0].entries[0].key",
        ),
        (
            _local(descriptors=[{"entries": [{"key": "method"}], "token_bucket": TB}]),
            "dubbo_filters[0].config.descriptors[0].entries[0].value",
        ),
        (
            _local(descriptors=[{"entries": [{"key": "method", "value": "m"}]}]),
            "dubbo_filters[0].config.descriptors[0].token_bucket",
        ),
        (_local(), "dubbo_filters[0].config: a token_bucket or descriptors"),
        (
            _local(token_bucket=TB, filter_enabled={"default_value": {"numerator": 50}}),
            "dubbo_filters[0].config.filter_enabled",
        ),
        (
            ("sofamesh.filters.rpc.local_ratelimit", {"@type": LOCAL, "token_bucket": TB}),
            "dubbo_filters[0].config.stat_prefix",
        ),
        (_rlqs(":authority"), "dubbo_filters[0].config.bucket_matchers: RPC calls are matched"),
    ],
)
def test_refused_by_path(config, where):
    with pytest.raises(UnsupportedConfig) as e:
        _build(config)
    assert where in str(e.value)
