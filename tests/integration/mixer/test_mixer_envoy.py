"""`sofamesh mixer` with real Envoy 1.40 as its client: the access log service (N requests
show as N in /metrics), the rate-limit service (allowed, over limit -> 429,
`failure_mode_deny` with the mixer down) and RLQS (the limit Envoy enforces is the mixer's)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import envoy_binary, free_port
from tests.integration.mixer.conftest import get_status, http_bootstrap, wait_metric
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
RLS = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
RLQ = "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig"
RLQ_BUCKET = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaBucketSettings"
)


def als_logger(flush: str = "0.1s") -> dict:
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": ALS,
            "common_config": {
                "log_name": "mesh",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
                "buffer_flush_interval": flush,
            },
        },
    }


def ratelimit_filter(deny: bool) -> dict:
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": RLS,
            "domain": "mesh",
            "failure_mode_deny": deny,
            "timeout": "0.5s",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
            },
        },
    }


def rlqs_filter(reporting: str = "1s", no_assignment: str | None = None) -> dict:
    settings: dict = {
        "@type": RLQ_BUCKET,
        "bucket_id_builder": {"bucket_id_builder": {"name": {"string_value": "checkout"}}},
        "reporting_interval": reporting,
    }
    if no_assignment:
        settings["no_assignment_behavior"] = {
            "fallback_rate_limit": {"blanket_rule": no_assignment}
        }
    return {
        "name": "envoy.filters.http.rate_limit_quota",
        "typed_config": {
            "@type": RLQ,
            "domain": "mesh",
            "rlqs_server": {"envoy_grpc": {"cluster_name": "mixer"}},
            "bucket_matchers": {
                "on_no_match": {"action": {"name": "bucket", "typed_config": settings}}
            },
        },
    }


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _envoy(tmp_path, **kw) -> ProxyProcess:
    admin, listen = free_ports(2)
    return ProxyProcess.envoy(
        envoy_binary(), http_bootstrap(admin=admin, listen=listen, **kw), tmp_path / kw["node"]
    )


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def test_envoy_access_log_service_counts_every_request(tmp_path, mixer_factory, upstream):
    mixer = mixer_factory()
    p = _envoy(
        tmp_path,
        node="frontend",
        app=upstream.ports["a"],
        mixer=mixer.grpc_port,
        access_log=[als_logger()],
    ).start()
    try:
        n = 37
        for i in range(n):
            path = "/" if i % 5 else "/missing"
            headers = {"x-upstream-action": "status=404"} if i % 5 == 0 else {}
            get_status(_listen(p), path, headers)
        got = wait_metric(mixer, "istio_requests_total", n, source="frontend")
        assert got == n
        assert mixer.metric("istio_requests_total", destination="app", response_code="200") == 29
        assert mixer.metric("istio_requests_total", destination="app", response_code="404") == 8
        assert mixer.metric("istio_request_duration_milliseconds_count", source="frontend") == n
        assert mixer.metric("istio_request_duration_milliseconds_bucket", le="+Inf") == n
    finally:
        p.stop()


def test_envoy_ratelimit_service_allows_then_429(tmp_path, mixer_factory, upstream):
    mixer = mixer_factory(
        "ratelimits:\n"
        "  - domain: mesh\n"
        "    descriptor: [{key: user, value: alice}]\n"
        "    requests_per_unit: 5\n"
        "    unit: hour\n"
        "  - domain: mesh\n"
        "    descriptor: [{key: user}]\n"  # any other user: 1000/minute, counted per value
        "    requests_per_unit: 1000\n"
        "    unit: minute\n"
    )
    action = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}
    p = _envoy(
        tmp_path,
        node="rl",
        app=upstream.ports["a"],
        mixer=mixer.grpc_port,
        http_filters=[ratelimit_filter(deny=True)],
        rate_limits=[action],
    ).start()
    try:
        port = _listen(p)
        alice = [get_status(port, "/", {"x-user": "alice"}) for _ in range(8)]
        bob = [get_status(port, "/", {"x-user": "bob"}) for _ in range(8)]
        assert alice == [200] * 5 + [429] * 3  # (fails if an hour starts mid-test)
        assert bob == [200] * 8
        assert mixer.metric("sofamesh_mixer_ratelimit_checks_total", code="OVER_LIMIT") == (
            alice.count(429)
        )
    finally:
        p.stop()


def test_envoy_ratelimit_failure_mode_deny_when_mixer_is_down(tmp_path, upstream):
    down = free_port()  # nothing listens there
    action = {"actions": [{"generic_key": {"descriptor_value": "all"}}]}
    deny = _envoy(
        tmp_path,
        node="deny",
        app=upstream.ports["a"],
        mixer=down,
        http_filters=[ratelimit_filter(deny=True)],
        rate_limits=[action],
    ).start()
    allow = _envoy(
        tmp_path,
        node="allow",
        app=upstream.ports["a"],
        mixer=down,
        http_filters=[ratelimit_filter(deny=False)],
        rate_limits=[action],
    ).start()
    try:
        assert [get_status(_listen(deny)) for _ in range(3)] == [500] * 3
        assert [get_status(_listen(allow)) for _ in range(3)] == [200] * 3
    finally:
        deny.stop()
        allow.stop()


def test_envoy_rlqs_enforces_the_mixers_limit(tmp_path, mixer_factory, upstream):
    rate = 20
    mixer = mixer_factory(
        f"quotas:\n  - domain: mesh\n    bucket: {{name: checkout}}\n"
        f"    requests_per_second: {rate}\n"
    )
    p = _envoy(
        tmp_path,
        node="quota",
        app=upstream.ports["a"],
        mixer=mixer.grpc_port,
        http_filters=[rlqs_filter(no_assignment="DENY_ALL")],
    ).start()
    try:
        port = _listen(p)
        get_status(port)  # creates the bucket: the first report
        deadline = time.monotonic() + 10
        while mixer.metric("sofamesh_mixer_quota_assigned") == 0:
            assert time.monotonic() < deadline, "no RLQS report reached the mixer"
            time.sleep(0.1)
        time.sleep(1.5)  # a full second's tokens
        start = time.monotonic()
        codes = []
        while time.monotonic() - start < 3.0:
            codes.append(get_status(port))
        elapsed = time.monotonic() - start
        allowed = codes.count(200)
        assert set(codes) <= {200, 429}
        assert codes.count(429) > allowed  # the client is far over the limit
        # tokens of 3 s plus the bucket's burst (max_tokens)
        print(f"RLQS: {allowed} allowed of {len(codes)} in {elapsed:.2f} s at {rate}/s")
        assert rate * elapsed * 0.8 <= allowed <= rate * elapsed + rate * 0.1 + 2, (
            allowed,
            elapsed,
        )
        assert mixer.metric("sofamesh_mixer_quota_assigned", bucket="name=checkout") == rate
    finally:
        p.stop()
