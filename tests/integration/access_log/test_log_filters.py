"""Access log filters and several loggers on one listener, against Envoy 1.40: one connection
manager with ten file loggers, each with its own filter (and two with their own formats);
the same requests through both proxies; each logger's file must hold the same lines."""

from __future__ import annotations

import re
import time

from tests.integration.access_log.conftest import file_log
from tests.integration.http_filters.conftest import typed

FMT = {"text_format_source": {"inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}


def _cmp(op: str, value: int) -> dict:
    return {"op": op, "value": {"default_value": value, "runtime_key": "k"}}


FILTERS = {
    "all": None,
    "status_ge_400": {"status_code_filter": {"comparison": _cmp("GE", 400)}},
    "ok_and_quick": {
        "and_filter": {
            "filters": [
                {"status_code_filter": {"comparison": _cmp("EQ", 200)}},
                {"duration_filter": {"comparison": _cmp("LE", 60000)}},
            ]
        }
    },
    "not_health_check": {"not_health_check_filter": {}},
    "traceable": {"traceable_filter": {}},
    "runtime_half": {
        "runtime_filter": {
            "runtime_key": "access_log.sample",
            "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"},
        }
    },
    "header_or_nr": {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": "x-log", "present_match": True}}},
                {"response_flag_filter": {"flags": ["NR"]}},
            ]
        }
    },
    "any_flag": {"response_flag_filter": {}},
    "grpc_unavailable": {"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}},
    "header_exact_not_503": {
        "and_filter": {
            "filters": [
                {"header_filter": {"header": {"name": "x-log", "string_match": {"exact": "yes"}}}},
                {"status_code_filter": {"comparison": _cmp("NE", 503)}},
            ]
        }
    },
}

VHOST = {
    "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 202}},
        {"match": {"prefix": "/api"}, "route": {"cluster": "backend"}},
    ]
}
HEALTH = {
    "name": "envoy.filters.http.health_check",
    "typed_config": typed(
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        pass_through_mode=False,
        headers=[{"name": ":path", "string_match": {"exact": "/healthz"}}],
    ),
}

REQUESTS = [
    ("/api/ok", {}),
    ("/api/unavailable", {"x-resp-status": "503"}),
    ("/nowhere", {}),
    ("/healthz", {}),
    ("/api/marked", {"x-log": "yes"}),
    ("/api/marked-503", {"x-log": "yes", "x-resp-status": "503"}),
    ("/api/marked-other", {"x-log": "no"}),
    ("/api/rid-in", {"x-request-id": "00000010-0000-4000-8000-000000000000"}),
    ("/api/rid-out", {"x-request-id": "000000ff-0000-4000-8000-000000000000"}),
    ("/api/rid-in2", {"x-request-id": "000003e8-0000-4000-8000-000000000000"}),
    ("/direct", {}),
    ("/api/notfound", {"x-resp-status": "404"}),
]


def test_filters_and_many_loggers_like_envoy(alpair):
    names = list(FILTERS)
    logs = [file_log(i, FMT, FILTERS[n]) for i, n in enumerate(names)]
    envoy, ours = alpair(logs, http_filters=[HEALTH], virtual_host=VHOST)
    for side in (envoy, ours):
        for path, headers in REQUESTS:
            side.request("GET", path, headers)
    n = len(REQUESTS)
    assert len(envoy.lines(0, n)) == n and len(ours.lines(0, n)) == n
    # each logger writes its batch on its own 1 s timer, started by its own first line:
    # two intervals more and every batch of these requests is out
    time.sleep(2.0)
    got = {}
    for i, name in enumerate(names):
        e, o = envoy.lines(i, 0), ours.lines(i, 0)
        if name == "runtime_half":  # a generated request id samples at random: fixed ids only
            e, o = [x for x in e if "rid" in x], [x for x in o if "rid" in x]
        assert o == e, name
        got[name] = o
    # what each filter let through, as a user reads it in sofamesh's files
    assert got["status_ge_400"] == [
        "/api/unavailable 503 -",
        "/nowhere 404 NR",
        "/api/marked-503 503 -",
        "/api/notfound 404 -",
    ]
    assert "/healthz 200 -" in got["all"] and not any(
        "healthz" in x for x in got["not_health_check"]
    )
    assert got["traceable"] == []  # no tracing on the connection manager: nothing is forced
    # x-request-id 0x10 % 100 = 16 and 0x3e8 % 100 = 0 are under 50; 0xff % 100 = 55 is not
    assert [x.split()[0] for x in got["runtime_half"]] == ["/api/rid-in", "/api/rid-in2"]
    assert got["any_flag"] == ["/nowhere 404 NR"]
    assert got["header_exact_not_503"] == ["/api/marked 200 -"]


def test_two_loggers_two_formats_like_envoy(alpair):
    """A JSON logger for errors and a text logger for everything, on one listener."""
    json_fmt = {"json_format": {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}}
    text_fmt = {"text_format_source": {"inline_string": "%RESPONSE_CODE% %REQ(:PATH)%\n"}}
    logs = [
        file_log(0, json_fmt, FILTERS["status_ge_400"]),
        file_log(1, text_fmt),
        file_log(2),  # Envoy's default format
    ]
    envoy, ours = alpair(logs, http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        side.request("GET", "/api/a", {})
        side.request("GET", "/api/b", {"x-resp-status": "500"})
    assert (
        ours.lines(0, 1, settle=0.3)
        == envoy.lines(0, 1, settle=0.3)
        == ['{"code":500,"path":"/api/b"}']
    )
    assert ours.lines(1, 2) == envoy.lines(1, 2) == ["200 /api/a", "500 /api/b"]

    def default(line: str) -> str:  # the default line without time, durations, ids, ports
        line = re.sub(r"^\[[^]]+\]", "[T]", line)
        line = re.sub(r" (\d+) (\d+|-) \"", ' N N "', line, count=1)
        line = re.sub(r'"[0-9a-f-]{36}"', '"RID"', line)
        return re.sub(r":\d+", ":P", line)

    assert [default(x) for x in ours.lines(2, 2)] == [default(x) for x in envoy.lines(2, 2)]


def test_traceable_filter_with_tracing_like_envoy(alpair):
    """With tracing on the connection manager, traceable_filter logs only requests whose trace
    the service forced. Envoy 1.40 honours x-envoy-force-trace from internal requests only,
    and with internal_address_config unset no peer is internal: neither proxy logs any of
    these (a random, a forced and a client-sampled request), while the unfiltered logger
    has all three."""
    tracing = {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": typed(
                "envoy.config.trace.v3.ZipkinConfig",
                collector_cluster="backend",
                collector_endpoint="/api/v2/spans",
                collector_endpoint_version="HTTP_JSON",
            ),
        },
    }
    logs = [file_log(0, FMT), file_log(1, FMT, FILTERS["traceable"])]
    hcm = {"tracing": tracing, "use_remote_address": True}
    envoy, ours = alpair(logs, http_filters=[], virtual_host=VHOST, hcm_extra=hcm)
    for side in (envoy, ours):
        side.request("GET", "/api/plain", {})
        side.request("GET", "/api/forced", {"x-envoy-force-trace": "true"})
        side.request("GET", "/api/client", {"x-client-trace-id": "abc"})
    assert ours.lines(0, 3) == envoy.lines(0, 3)
    assert len(ours.lines(0, 3)) == 3
    assert ours.lines(1, 0, settle=2.0) == envoy.lines(1, 0) == []
