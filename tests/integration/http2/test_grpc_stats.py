"""envoy.filters.http.grpc_stats: the counters Envoy users scrape, compared name by name and
value by value between real Envoy 1.40 and sofamesh for the same calls (unary OK and
failing, server streaming, client streaming, a gRPC request answered by a non-gRPC
HTTP/1.1 upstream), in the three ways the filter can be configured (Istio's default, every
method, an allowlist)."""

from __future__ import annotations

import re
import time

import grpc
import pytest

from .conftest import SERVICE

CASES = {
    "istio-default": {"emit_filter_state": True, "stats_for_all_methods": False},
    "all-methods": {"stats_for_all_methods": True, "replace_dots_in_grpc_service_name": True},
    "allowlist": {
        "individual_method_stats_allowlist": {
            "services": [{"name": SERVICE, "method_names": ["Unary"]}]
        },
        "replace_dots_in_grpc_service_name": True,
    },
}
GRPC_STAT = re.compile(r"^cluster\.(grpc|h1)\.grpc\.")


def _calls(p) -> dict[str, int]:
    with p.channel() as ch:
        f = ch.unary_unary(f"/{SERVICE}/Unary")
        f(b"x", timeout=10)
        with pytest.raises(grpc.RpcError):
            f(b"fail:NOT_FOUND:nope", timeout=10)
        assert len(list(ch.unary_stream(f"/{SERVICE}/Stream")(b"3", timeout=10))) == 3
        ch.stream_unary(f"/{SERVICE}/Collect")(iter([b"a", b"b"]), timeout=10)
        with pytest.raises(grpc.RpcError):  # routed to the HTTP/1.1 (not gRPC) upstream
            ch.unary_unary("/other.Svc/Call")(b"x", timeout=10)
    deadline = time.monotonic() + 5
    while True:
        got = {k: v for k, v in p.stats().items() if GRPC_STAT.match(k)}
        if sum(v for k, v in got.items() if k.endswith(".total")) >= 4:
            return got
        if time.monotonic() > deadline:
            return got
        time.sleep(0.1)


EXPECTED = {
    "istio-default": {
        "cluster.grpc.grpc.0": 3,
        "cluster.grpc.grpc.5": 1,
        "cluster.grpc.grpc.success": 3,
        "cluster.grpc.grpc.failure": 1,
        "cluster.grpc.grpc.total": 4,
        "cluster.grpc.grpc.request_message_count": 5,
        "cluster.grpc.grpc.response_message_count": 5,
        "cluster.h1.grpc.request_message_count": 1,
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_grpc_stats_as_envoy_counts_them(proxies, case):
    p = proxies(
        filters=[
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3."
                    "FilterConfig",
                    **CASES[case],
                },
            }
        ]
    )
    got = _calls(p)
    if case in EXPECTED:
        assert got == EXPECTED[case]
    elif case == "all-methods":
        assert got["cluster.grpc.grpc.sofamesh_test_Echo.Stream.response_message_count"] == 3
        assert got["cluster.grpc.grpc.sofamesh_test_Echo.Unary.failure"] == 1
        assert got["cluster.h1.grpc.other_Svc.Call.request_message_count"] == 1
        assert len(got) == 18, got
    else:  # allowlist: names as listed (dots kept), other methods in the generic counters
        assert got["cluster.grpc.grpc.sofamesh.test.Echo.Unary.total"] == 2
        assert got["cluster.grpc.grpc.total"] == 2
        assert len(got) == 13, got
