"""The tracing decision driven by the caller's x-request-id, as Envoy 1.40 makes it: with
random_sampling, a UUID request id decides by its value (the same id, the same decision, in
every proxy of a mesh), and an id another proxy already marked as traced (its version nibble
'9', 'a' or 'b') is traced again whatever the local sampling says. The same bootstrap and
requests through real Envoy and `sofamesh proxy`; per request, what the upstream receives
(x-b3-sampled and the request id's mark) must be the same."""

from __future__ import annotations

import http.client

from tests.integration.http2.conftest import _cluster, proxies  # noqa: F401

ROUTES = [{"match": {"prefix": "/"}, "route": {"cluster": "h1"}}]


def zipkin_tracing(pct: float) -> dict:
    """HCM tracing: Zipkin (HTTP JSON v2) to the `zipkin` cluster at `pct` % sampling."""
    return {
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
            },
        },
        "random_sampling": {"value": pct},
    }


# ids whose first eight hex digits spread over the 10,000 buckets, unmarked ('4'), marked
# sampled ('9'), forced ('a'), client-forced ('b'), and ids that are not UUIDs
IDS = [f"{v:08x}-0000-4000-8000-000000000000" for v in range(0, 2**32, 2**32 // 24 + 7)]
IDS += [f"{v:08x}-1111-9111-8111-111111111111" for v in (1, 7000, 123456789)]
IDS += ["0000abcd-2222-a222-8222-222222222222", "0000abcd-3333-b333-8333-333333333333"]
IDS += ["not-a-uuid", "12345678", "ZZZZZZZZ-0000-4000-8000-000000000000"]

SEEN: dict = {}


def _run(p) -> list:
    out = []
    for i, rid in enumerate(IDS):
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", f"/r{i}", headers={"host": "svc.local", "x-request-id": rid})
        assert conn.getresponse().read() is not None
        conn.close()
    for r in p.upstream.snapshot():
        if not r.target.startswith("/r"):
            continue
        h = dict(r.headers)
        out.append((int(r.target[2:]), h.get("x-b3-sampled"), h.get("x-request-id")))
    return sorted(out)


def _case(proxies, pct: float, name: str) -> None:  # noqa: F811
    p = proxies(
        hcm={"tracing": zipkin_tracing(pct)},
        routes=ROUTES,
        clusters=lambda grpc_port, h1_port: [_cluster("zipkin", h1_port, False)],
    )
    got = _run(p)
    assert len(got) == len(IDS)
    SEEN.setdefault(name, {})[p.kind] = got
    if len(SEEN[name]) == 2:
        assert SEEN[name]["envoy"] == SEEN[name]["sofamesh"]


def test_request_id_decides_sampling_as_envoy(proxies):  # noqa: F811
    _case(proxies, 50, "half")


def test_marked_request_ids_traced_without_sampling_as_envoy(proxies):  # noqa: F811
    _case(proxies, 0, "none")
