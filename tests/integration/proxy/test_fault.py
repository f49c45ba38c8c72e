"""envoy.filters.http.fault: aborts and delays (abort at 100% is also compared with real Envoy
by the differential case http-fault-abort-100)."""

from __future__ import annotations

import time

from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401  (type URL for the test bootstraps)

from .conftest import bootstrap, cluster, route, vhost

FAULT_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def _fault(**cfg):
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_URL, **cfg}}


def _pct(n):
    return {"numerator": n, "denominator": "HUNDRED"}


async def test_abort_delay_header_and_per_route_faults(upstreams, proxy):
    up = await upstreams("up")
    per_route = {
        "envoy.filters.http.fault": {
            "@type": FAULT_URL,
            "delay": {"fixed_delay": "0.3s", "percentage": _pct(100)},
        }
    }
    routes = [route("/delayed", "up"), route("/", "up")]
    routes[0]["typed_per_filter_config"] = per_route
    bs = bootstrap(
        [vhost(routes)],
        [cluster("up", [up.port])],
        filters=[
            _fault(
                abort={"header_abort": {}, "percentage": _pct(100)},
                max_active_faults=5,
            )
        ],
    )
    p = await proxy(bs)
    c = await p.client()
    # no header: no fault
    assert (await c.request("GET", "/a")).status == 200
    r = await c.request("GET", "/a", headers={"x-envoy-fault-abort-request": "503"})
    assert (r.status, r.body) == (503, b"fault filter abort")
    assert len(up.requests) == 1
    assert p.counter("http.ingress.fault.aborts_injected") == 1
    # the route's own fault config replaces the listener's: a delay, no abort
    t0 = time.monotonic()
    r = await c.request("GET", "/delayed", headers={"x-envoy-fault-abort-request": "503"})
    assert r.status == 200 and time.monotonic() - t0 >= 0.28
    assert p.counter("http.ingress.fault.delays_injected") == 1
    assert p.gauge("http.ingress.fault.active_faults") == 0
    await c.close()


async def test_abort_percentage_zero_never_fires(upstreams, proxy):
    up = await upstreams("up")
    bs = bootstrap(
        [vhost([route("/", "up")])],
        [cluster("up", [up.port])],
        filters=[_fault(abort={"http_status": 418, "percentage": _pct(0)})],
    )
    p = await proxy(bs)
    c = await p.client()
    for _ in range(20):
        assert (await c.request("GET", "/a")).status == 200
    assert p.counter("http.ingress.fault.aborts_injected") == 0
    await c.close()
