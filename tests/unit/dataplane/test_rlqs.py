"""envoy.filters.http.rate_limit_quota's compiled halves without sockets: what the config
compiler refuses (by path), how assignments become actions, TTL expiry and fallbacks."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as q
from envoy.service.rate_limit_quota.v3 import rlqs_pb2
from google.protobuf import any_pb2, json_format

from sofamesh._core.rlqs import ACTION_ALLOW_ALL, ACTION_DENY_ALL, ACTION_TOKENS
from sofamesh.filters.http.rate_limit_quota import SETTINGS_URL, factory
from sofamesh.proxy.errors import UnsupportedConfig


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[list] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay, fn):
        t = [self.now + delay, fn, False]
        self.timers.append(t)

        class H:
            def cancel(self) -> None:
                t[2] = True

        return H()

    def advance(self, dt: float) -> None:
        self.now += dt
        for t in sorted(self.timers, key=lambda t: t[0]):
            if t[0] <= self.now and not t[2]:
                t[2] = True
                t[1]()


def _config(**settings) -> any_pb2.Any:
    s = {
        "@type": SETTINGS_URL,
        "bucket_id_builder": {"bucket_id_builder": {"name": {"string_value": "b"}}},
        "reporting_interval": "1s",
        **settings,
    }
    cfg = {
        "domain": "mesh",
        "rlqs_server": {"envoy_grpc": {"cluster_name": "mixer"}},
        "bucket_matchers": {"on_no_match": {"action": {"name": "x", "typed_config": s}}},
    }
    msg = json_format.ParseDict(cfg, q.RateLimitQuotaFilterConfig())
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _filter(loop: FakeLoop, **settings):
    return factory(_config(**settings), {"loop": loop, "path": "f", "clusters": {}})


def _action(bucket: str, **strategy) -> rlqs_pb2.RateLimitQuotaResponse.BucketAction:
    act = rlqs_pb2.RateLimitQuotaResponse.BucketAction()
    act.bucket_id.bucket["name"] = bucket
    qa = act.quota_assignment_action
    qa.assignment_time_to_live.seconds = 2
    json_format.ParseDict(strategy, qa.rate_limit_strategy)
    return act


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        (
            {"bucket_id_builder": {"bucket_id_builder": {"n": {"custom_value": {"name": "c"}}}}},
            "bucket_id_builder[n]: only string_value",
        ),
        ({"reporting_interval": "0s"}, "reporting_interval: required"),
        (
            {"deny_response_settings": {"grpc_status": {"code": 8}}},
            "deny_response_settings.grpc_status",
        ),
    ],
)
def test_refused_by_path(settings, where):
    with pytest.raises(UnsupportedConfig, match=where.replace("[", r"\[").replace("]", r"\]")):
        _filter(FakeLoop(), **settings)


def test_matcher_list_refused():
    a = _config()
    msg = q.RateLimitQuotaFilterConfig()
    a.Unpack(msg)
    msg.bucket_matchers.matcher_list.matchers.add()
    a.Pack(msg)
    with pytest.raises(UnsupportedConfig, match="bucket_matchers.matcher_list"):
        factory(a, {"loop": FakeLoop(), "path": "f", "clusters": {}})


def test_assignments_ttl_and_fallbacks():
    from sofamesh.filters.http.rate_limit_quota import RlqsClient

    loop = FakeLoop()
    flt = _filter(
        loop,
        no_assignment_behavior={"fallback_rate_limit": {"blanket_rule": "DENY_ALL"}},
        expired_assignment_behavior={
            "fallback_rate_limit": {"blanket_rule": "ALLOW_ALL"},
            "expired_assignment_behavior_timeout": "3s",
        },
    )
    assert flt.current_action.kind == ACTION_DENY_ALL  # no assignment yet
    client = RlqsClient.__new__(RlqsClient)  # the filter's own client is private: rebuild
    cfg = q.RateLimitQuotaFilterConfig()
    _config().Unpack(cfg)
    settings = q.RateLimitQuotaBucketSettings()
    json_format.ParseDict(
        {
            "reporting_interval": "1s",
            "no_assignment_behavior": {"fallback_rate_limit": {"blanket_rule": "DENY_ALL"}},
            "expired_assignment_behavior": {
                "fallback_rate_limit": {"blanket_rule": "ALLOW_ALL"},
                "expired_assignment_behavior_timeout": "3s",
            },
        },
        settings,
    )
    client.__init__(flt, cfg, settings, {"name": "b"}, loop, {}, "f")
    tb = {"token_bucket": {"max_tokens": 3, "tokens_per_fill": 30, "fill_interval": "1s"}}
    client.apply(_action("b", **tb))
    a = flt.current_action
    assert a.kind == ACTION_TOKENS
    assert a.bucket.max_tokens == 3 and a.bucket.fill_interval == pytest.approx(1 / 30)
    client.apply(_action("b", **tb))
    assert flt.current_action is a  # unchanged assignment: same bucket, tokens kept
    loop.advance(2.1)  # TTL passed: expired_assignment_behavior's fallback
    assert flt.current_action.kind == ACTION_ALLOW_ALL
    loop.advance(3.1)  # and after its timeout, no_assignment_behavior again
    assert flt.current_action.kind == ACTION_DENY_ALL
    client.apply(_action("b", blanket_rule="DENY_ALL"))
    assert flt.current_action.kind == ACTION_DENY_ALL
    abandon = rlqs_pb2.RateLimitQuotaResponse.BucketAction()
    abandon.bucket_id.bucket["name"] = "b"
    abandon.abandon_action.SetInParent()
    client.apply(_action("b", blanket_rule="ALLOW_ALL"))
    assert flt.current_action.kind == ACTION_ALLOW_ALL
    client.apply(abandon)
    assert flt.current_action.kind == ACTION_DENY_ALL
