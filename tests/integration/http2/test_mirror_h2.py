"""Request mirroring to an HTTP/2 cluster, against Envoy 1.40 on one bootstrap: a route
answers from the HTTP/1.1 recording upstream (cluster "h1") and mirrors each request
(`request_mirror_policies`) to an HTTP/2 recording upstream (cluster "h2rec",
tests/support/h2_peers.py), for an HTTP/1.1 client and an h2c client, with and without a
body, with the shadow host suffix and without it. Compared: the client's answer, and what
the HTTP/2 mirror received (pseudo-headers, headers, body)."""

from __future__ import annotations

import http.client
import time
import urllib.request
from typing import Any

import pytest

from tests.support.h2_peers import H2RecordingUpstream, h2_exchange

from .conftest import _cluster
from .harness import KINDS, start

VOLATILE = {"x-request-id", "x-forwarded-for", "date", "x-envoy-upstream-service-time"}
ROUTES = [
    {
        "match": {"prefix": "/mirror/"},
        "route": {"cluster": "h1", "request_mirror_policies": [{"cluster": "h2rec"}]},
    },
    {
        "match": {"prefix": "/dead/"},
        "route": {"cluster": "h1", "request_mirror_policies": [{"cluster": "h2dead"}]},
    },
    {
        "match": {"prefix": "/keep/"},
        "route": {
            "cluster": "h1",
            "request_mirror_policies": [
                {"cluster": "h2rec", "disable_shadow_host_suffix_append": True}
            ],
        },
    },
]
CASES = {
    # name: (client, path, body)
    "h1-get": ("h1", "/mirror/a?q=1", None),
    "h1-post": ("h1", "/mirror/b", b"x" * 40000),
    "h1-keep-host": ("h1", "/keep/c", None),
    "h2-get": ("h2", "/mirror/d", None),
    "h2-post": ("h2", "/mirror/e", b"y" * 70000),
    # a mirror cluster with nothing listening: the main request does not notice
    "h1-dead-mirror": ("h1", "/dead/f", b"z" * 1000),
    "h2-dead-mirror": ("h2", "/dead/g", b"z" * 1000),
}


def _send(port: int, case: str, client: str, path: str, body: bytes | None) -> tuple:
    hdrs = {"x-case-id": case, "x-extra": "kept"}
    if client == "h1":
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("POST" if body else "GET", path, body=body, headers={"host": "svc", **hdrs})
            r = c.getresponse()
            r.read()
            return (r.status,)
        finally:
            c.close()
    fields = [
        (":method", "POST" if body else "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "svc"),
        *hdrs.items(),
    ]
    ex = h2_exchange(port, fields, body)
    return (ex.status, ex.reset)


def _observe(kind: str, tmp: Any) -> dict:
    mirror = H2RecordingUpstream().start()
    r = start(kind, tmp, routes=ROUTES, clusters=[_cluster("h2rec", mirror.port, True)])
    try:
        out = {}
        for case, (client, path, body) in CASES.items():
            answer = _send(r.port, case, client, path, body)
            wait = 0.5 if "dead" in case else 5
            (rec,) = mirror.wait_case(case, 1, timeout=wait) or [None]
            seen = None
            if rec is not None:
                seen = (
                    sorted((k, v) for k, v in rec.headers if k not in VOLATILE),
                    len(rec.body),
                    rec.body == (body or b""),
                )
            out[case] = (answer, seen)
        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{r.admin}/stats", timeout=5) as resp:
            stats = dict(
                ln.split(": ", 1) for ln in resp.read().decode().splitlines() if ": " in ln
            )
        out["stats"] = {
            k: stats.get(k)
            for k in (
                "cluster.h2rec.upstream_rq_active",
                "cluster.h2rec.upstream_rq_total",
                "cluster.h2dead.upstream_rq_active",
            )
        }
        return out
    finally:
        r.proc.stop()
        r.echo.stop()
        r.upstream.stop()
        mirror.stop()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: Any) -> dict:
    return {kind: _observe(kind, tmp_path_factory) for kind in KINDS}


@pytest.mark.parametrize("case", list(CASES))
def test_mirror_to_an_h2_cluster_as_envoy(observed: dict, case: str) -> None:
    envoy, ours = observed["envoy"][case], observed["sofamesh"][case]
    assert envoy[0][0] == 200, envoy
    if "dead" in case:
        assert envoy[1] is None and ours == envoy
        return
    assert envoy[1] is not None, envoy
    headers = dict(envoy[1][0])
    shadow = "svc" if case == "h1-keep-host" else "svc-shadow"
    assert headers[":authority"] == shadow and headers["x-extra"] == "kept"
    assert envoy[1][2], "the mirror got the whole body"
    assert ours == envoy


def test_mirror_counts_as_envoy(observed: dict) -> None:
    """Every mirror is over (none left active, the dead one too) and counted."""
    assert observed["envoy"]["stats"]["cluster.h2rec.upstream_rq_active"] == "0"
    assert observed["envoy"]["stats"]["cluster.h2dead.upstream_rq_active"] == "0"
    assert observed["sofamesh"]["stats"] == observed["envoy"]["stats"]
