"""The HTTP filter chain: local_ratelimit (Envoy semantics), a Python filter, access logs."""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

from .conftest import bootstrap, cluster, route, vhost

LRL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
HUNDRED = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "k"}


def lrl(max_tokens: int = 2, interval: str = "60s", **kw) -> dict:
    cfg = {
        "@type": LRL_TYPE,
        "stat_prefix": "lrl",
        "token_bucket": {
            "max_tokens": max_tokens,
            "tokens_per_fill": max_tokens,
            "fill_interval": interval,
        },
        "filter_enabled": HUNDRED,
        "filter_enforced": HUNDRED,
        "response_headers_to_add": [
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": "x-local-rate-limit", "value": "true"},
            }
        ],
    }
    cfg.update(kw)
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": cfg}


async def test_local_ratelimit_429_and_stats(upstreams, proxy):
    up = await upstreams()
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])], filters=[lrl(2)]))
    c = await p.client()
    assert (await c.request()).status == 200
    assert (await c.request()).status == 200
    r = await c.request()
    assert r.status == 429 and r.body == b"local_rate_limited"
    assert r.header("x-local-rate-limit") == "true"
    assert r.header("content-type") == "text/plain"
    r = await c.request()  # connection still usable, still limited
    assert r.status == 429
    assert len(up.requests) == 2
    assert p.counter("lrl.http_local_rate_limit.enabled") == 4
    assert p.counter("lrl.http_local_rate_limit.ok") == 2
    assert p.counter("lrl.http_local_rate_limit.rate_limited") == 2
    assert p.counter("lrl.http_local_rate_limit.enforced") == 2
    assert p.counter("http.ingress.downstream_rq_4xx") == 2
    await c.close()


async def test_local_ratelimit_refills(upstreams, proxy):
    up = await upstreams()
    p = await proxy(
        bootstrap([vhost([route("/")])], [cluster("up", [up.port])], filters=[lrl(1, "0.2s")])
    )
    c = await p.client()
    assert (await c.request()).status == 200
    assert (await c.request()).status == 429
    await asyncio.sleep(0.25)
    assert (await c.request()).status == 200
    await c.close()


async def test_local_ratelimit_not_enforced_only_counts(upstreams, proxy):
    up = await upstreams()
    f = lrl(1)
    del f["typed_config"]["filter_enforced"]
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])], filters=[f]))
    c = await p.client()
    for _ in range(3):
        assert (await c.request()).status == 200
    assert p.counter("lrl.http_local_rate_limit.rate_limited") == 2
    assert p.counter("lrl.http_local_rate_limit.enforced") == 0
    await c.close()


async def test_local_ratelimit_per_route_config(upstreams, proxy):
    up = await upstreams()
    base = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {"@type": LRL_TYPE, "stat_prefix": "global"},
    }
    per_route = lrl(1)["typed_config"]
    per_route["stat_prefix"] = "limited_route"
    vh = vhost(
        [
            {
                "match": {"prefix": "/limited"},
                "route": {"cluster": "up"},
                "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": per_route},
            },
            route("/"),
        ]
    )
    p = await proxy(bootstrap([vh], [cluster("up", [up.port])], filters=[base]))
    c = await p.client()
    for _ in range(3):
        assert (await c.request(path="/free")).status == 200
    assert (await c.request(path="/limited")).status == 200
    assert (await c.request(path="/limited")).status == 429
    assert p.counter("limited_route.http_local_rate_limit.rate_limited") == 1
    await c.close()


class HeaderAuth(HttpFilter):
    """A Python filter: denies without `x-token`, tags allowed requests, and can pause."""

    def decode_headers(self, s, end_stream):
        token = s.get_request_header("x-token")
        if token is None:
            s.send_local_reply(401, b"no token")
            return FILTER_STOP_
        s.add_request_header("x-user", token.decode())
        s.remove_request_header("x-token")
        s.add_response_header("x-filtered", "1")
        if token == b"slow":
            asyncio.get_running_loop().call_later(0.05, s.continue_decoding)
            return FILTER_STOP_
        return FILTER_CONTINUE_


register(
    FilterSpec(
        kind="http",
        names=("test.header_auth",),
        type_urls=("type.googleapis.com/google.protobuf.Empty",),
        factory=lambda cfg, ctx: HeaderAuth("test.header_auth", False, False),
    )
)


async def test_python_filter_plugs_in_before_the_router(upstreams, proxy):
    up = await upstreams()
    f = {
        "name": "test.header_auth",
        "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"},
    }
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])], filters=[f]))
    c = await p.client()
    r = await c.request()
    assert r.status == 401 and r.body == b"no token"
    r = await c.request(headers={"x-token": "alice"})
    assert r.status == 200 and r.header("x-filtered") == "1"
    assert r.upstream_header("x-user") == "alice"
    assert r.upstream_header("x-token") is None
    r = await c.request(headers={"x-token": "slow"})
    assert r.status == 200 and r.upstream_header("x-user") == "slow"
    await c.close()


async def test_file_access_log_default_format(upstreams, proxy, tmp_path):
    up = await upstreams()
    path = tmp_path / "access.log"
    al = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
            },
        }
    ]
    p = await proxy(bootstrap([vhost([route("/api")])], [cluster("up", [up.port])], access_log=al))
    c = await p.client()
    await c.request(
        path="/api/x", headers={"user-agent": "ua/1", "x-request-id": "rid-1"}, host="h.example"
    )
    await c.request(path="/nope")
    await c.close()
    await p.server.stop()  # flushes the batch
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    pat = (
        r'\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /api/x HTTP/1.1" 200 - 0 \d+ \d+ '
        r'\d+ "-" "ua/1" "rid-1" "h.example" "127.0.0.1:\d+"'
    )
    assert re.fullmatch(pat, lines[0]), lines[0]
    assert '"GET /nope HTTP/1.1" 404 NR 0 0 ' in lines[1]
    assert re.search(
        r'"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"', lines[1]
    )


class BodyCounter(HttpFilter):
    """Sees decoded request and response payloads; rejects request bodies containing 'evil'."""

    seen: ClassVar[dict] = {}

    def decode_data(self, s, data, end_stream):
        st = self.seen.setdefault("req", [])
        st.append((data, end_stream))
        if b"evil" in data:
            s.send_local_reply(403, b"body rejected")
        return FILTER_CONTINUE_

    def encode_data(self, s, data, end_stream):
        self.seen.setdefault("resp", []).append((data, end_stream))
        return FILTER_CONTINUE_


register(
    FilterSpec(
        kind="http",
        names=("test.body_counter",),
        type_urls=("type.googleapis.com/google.protobuf.Struct",),
        factory=lambda cfg, ctx: BodyCounter("test.body_counter", True, False),
    )
)


async def test_data_filters_see_decoded_payload_both_ways(upstreams, proxy):
    up = await upstreams()
    f = {
        "name": "test.body_counter",
        "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}},
    }
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [up.port])], filters=[f]))
    c = await p.client()
    BodyCounter.seen.clear()
    await c.send(
        b"POST /chunked/2 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    r = await c.response()
    assert r.body == b"chunk-0;chunk-1;"
    assert b"".join(d for d, _ in BodyCounter.seen["req"]) == b"abcde"
    assert BodyCounter.seen["req"][-1][1] is True
    assert b"".join(d for d, _ in BodyCounter.seen["resp"]) == b"chunk-0;chunk-1;"
    assert BodyCounter.seen["resp"][-1][1] is True
    r = await c.request("POST", "/sink", body=b"some evil payload")
    assert r.status == 403 and r.body == b"body rejected"
    await c.close()
