"""envoy.filters.http.ratelimit's config: what is not implemented is refused by path when
the routes or the filter are compiled, and the x-ratelimit-* headers are built as Envoy's
DRAFT_VERSION_03 (the limit of the descriptor with the fewest requests left, every limit's
quota policy)."""

from __future__ import annotations

import re

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import any_pb2, json_format

from sofamesh.filters.http import ratelimit
from sofamesh.proxy.errors import UnsupportedConfig


def _limits(doc: list) -> list:
    return [json_format.ParseDict(d, route_components_pb2.RateLimit()) for d in doc]


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (
            [
                {
                    "actions": [
                        {
                            "dynamic_metadata": {
                                "descriptor_key": "k",
                                "metadata_key": {"key": "a", "path": [{"key": "b"}]},
                            }
                        }
                    ]
                }
            ],
            "r[0].actions[0].dynamic_metadata",
        ),
        (
            [
                {"actions": [{"generic_key": {"descriptor_value": "a"}}]},
                {
                    "actions": [
                        {
                            "metadata": {
                                "descriptor_key": "k",
                                "metadata_key": {"key": "a", "path": [{"key": "b"}]},
                            }
                        }
                    ]
                },
            ],
            "r[1].actions[0].metadata",
        ),
        ([{"actions": [], "hits_addend": {"number": 2}}], "r[0].hits_addend"),
        ([{"actions": [], "apply_on_stream_done": True}], "r[0].apply_on_stream_done"),
        ([{"actions": [], "disable_key": "k"}], "r[0].disable_key"),
    ],
)
def test_unimplemented_rate_limit_parts_are_refused_by_path(doc, where):
    with pytest.raises(UnsupportedConfig, match="^" + re.escape(where)):
        ratelimit.compile_rate_limits(_limits(doc), "r")


def _any(doc: dict) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(json_format.ParseDict(doc, rate_limit_pb2.RateLimit()))
    return a


@pytest.mark.parametrize(
    "field",
    [
        {"stat_prefix": "x"},
        {"filter_enabled": {"default_value": {"numerator": 1}}},
        {"failure_mode_deny_percent": {"default_value": {"numerator": 50}}},
        {"rate_limited_as_resource_exhausted": True},
        {"rate_limit_service": {"grpc_service": {"google_grpc": {"target_uri": "x"}}}},
    ],
)
def test_unimplemented_filter_options_are_refused(field):
    doc = {
        "domain": "d",
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}},
        **field,
    }
    with pytest.raises(UnsupportedConfig, match=r"^hf\.typed_config\."):
        ratelimit.factory(_any(doc), {"path": "hf", "clusters": {"rls": object()}, "loop": None})


def test_unknown_service_cluster_is_refused():
    doc = {
        "domain": "d",
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "nope"}}},
    }
    with pytest.raises(UnsupportedConfig, match="unknown cluster 'nope'"):
        ratelimit.factory(_any(doc), {"path": "hf", "clusters": {}, "loop": None, "stats": None})


def test_x_ratelimit_headers_from_the_tightest_descriptor():
    resp = rls_pb2.RateLimitResponse()
    unit = rls_pb2.RateLimitResponse.RateLimit
    a = resp.statuses.add(limit_remaining=9)
    a.current_limit.requests_per_unit, a.current_limit.unit = 10, unit.SECOND
    resp.statuses.add()  # no limit: left out
    b = resp.statuses.add(limit_remaining=2)
    b.current_limit.requests_per_unit, b.current_limit.unit = 1000, unit.HOUR
    b.current_limit.name = "per-ip"
    b.duration_until_reset.seconds = 61
    assert ratelimit._x_ratelimit_headers(resp.statuses) == [
        ("x-ratelimit-limit", '1000, 10;w=1, 1000;w=3600;name="per-ip"'),
        ("x-ratelimit-remaining", "2"),
        ("x-ratelimit-reset", "61"),
    ]
    assert ratelimit._x_ratelimit_headers(rls_pb2.RateLimitResponse().statuses) == []
