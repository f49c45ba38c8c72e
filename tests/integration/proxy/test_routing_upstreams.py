"""Route tables end to end, clusters, load balancing, circuit breakers and retries."""

from __future__ import annotations

import asyncio
import collections

import pytest

from tests.conftest import free_port

from .conftest import bootstrap, cluster, route, vhost


async def test_virtual_host_precedence_and_matchers(upstreams, proxy):
    ups = {
        n: await upstreams(n)
        for n in ("exact", "suffix", "prefix", "star", "hdr", "qry", "rx", "path")
    }
    vhs = [
        vhost([route("/", "exact")], ["api.example.com"], name="exact"),
        vhost([route("/", "suffix")], ["*.example.com"], name="suffix"),
        vhost([route("/", "prefix")], ["api.*"], name="prefix"),
        vhost(
            [
                {
                    "match": {
                        "prefix": "/",
                        "headers": [{"name": "x-canary", "string_match": {"exact": "yes"}}],
                    },
                    "route": {"cluster": "hdr"},
                },
                {
                    "match": {
                        "prefix": "/",
                        "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}],
                    },
                    "route": {"cluster": "qry"},
                },
                {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "rx"}},
                {"match": {"path": "/exact"}, "route": {"cluster": "path"}},
                route("/", "star"),
            ],
            ["*"],
            name="star",
        ),
    ]
    p = await proxy(bootstrap(vhs, [cluster(n, [u.port]) for n, u in ups.items()]))
    c = await p.client()
    cases = [
        ("api.example.com", "/", {}, "exact"),
        ("API.Example.com", "/", {}, "exact"),
        ("www.example.com", "/", {}, "suffix"),
        ("api.other.org", "/", {}, "prefix"),
        ("other.org", "/", {"x-canary": "yes"}, "hdr"),
        ("other.org", "/a?v=2", {}, "qry"),
        ("other.org", "/a?v=3", {}, "star"),
        ("other.org", "/items/42", {}, "rx"),
        ("other.org", "/items/42x", {}, "star"),
        ("other.org", "/exact?q", {}, "path"),
        ("other.org", "/exact/no", {}, "star"),
    ]
    for host, path, hdrs, want in cases:
        r = await c.request(path=path, host=host, headers=hdrs)
        assert r.status == 200
        assert r.json()["upstream"] == want, (host, path, hdrs)
    await c.close()


async def test_rewrites_and_header_mutations(upstreams, proxy):
    up = await upstreams()
    vh = vhost(
        [
            {
                "match": {"prefix": "/api/"},
                "route": {
                    "cluster": "up",
                    "prefix_rewrite": "/v2/",
                    "host_rewrite_literal": "svc.local",
                },
                "request_headers_to_add": [{"header": {"key": "x-route", "value": "r1"}}],
                "request_headers_to_remove": ["x-secret"],
                "response_headers_to_add": [{"header": {"key": "x-resp", "value": "yes"}}],
                "response_headers_to_remove": ["content-type"],
            }
        ],
        request_headers_to_add=[{"header": {"key": "x-vhost", "value": "v"}}],
    )
    p = await proxy(bootstrap([vh], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/api/users?id=1", headers={"x-secret": "s", "x-keep": "k"})
    j = r.json()
    assert j["path"] == "/v2/users?id=1"
    assert r.upstream_header("host") == "svc.local"
    assert r.upstream_header("x-route") == "r1"
    assert r.upstream_header("x-vhost") == "v"
    assert r.upstream_header("x-secret") is None
    assert r.upstream_header("x-keep") == "k"
    assert r.header("x-resp") == "yes"
    assert r.header("content-type") is None
    await c.close()


async def test_weighted_clusters_split_traffic(upstreams, proxy):
    a, b = await upstreams("a"), await upstreams("b")
    vh = vhost(
        [
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]
                    }
                },
            }
        ]
    )
    p = await proxy(bootstrap([vh], [cluster("a", [a.port]), cluster("b", [b.port])]))
    c = await p.client()
    seen = collections.Counter()
    for _ in range(300):
        seen[(await c.request()).json()["upstream"]] += 1
    assert 190 < seen["a"] < 290 and seen["b"] > 20
    await c.close()


async def test_round_robin_and_weights_across_hosts(upstreams, proxy):
    a, b = await upstreams("a"), await upstreams("b")
    p = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [a.port, b.port])]))
    c = await p.client()
    got = [(await c.request()).json()["upstream"] for _ in range(6)]
    assert got.count("a") == 3 and got.count("b") == 3
    assert got[0] != got[1]
    await c.close()
    p2 = await proxy(bootstrap([vhost([route("/")])], [cluster("up", [(a.port, 3), (b.port, 1)])]))
    c = await p2.client()
    got = [(await c.request()).json()["upstream"] for _ in range(8)]
    assert got.count("a") == 6 and got.count("b") == 2
    await c.close()


async def test_least_request_prefers_the_idle_host(upstreams, proxy):
    a, b = await upstreams("a"), await upstreams("b")
    p = await proxy(
        bootstrap(
            [vhost([route("/")])], [cluster("up", [a.port, b.port], lb_policy="LEAST_REQUEST")]
        )
    )
    busy = []
    for _ in range(4):  # four slow requests in flight
        c = await p.client()
        await c.send(b"GET /slow/400 HTTP/1.1\r\nhost: a\r\n\r\n")
        busy.append(c)
    await asyncio.sleep(0.1)
    hosts = p.server.clusters["up"].hosts
    assert sum(h.rq_active for h in hosts) == 4
    c = await p.client()
    for _ in range(10):
        r = await c.request()
        assert r.status == 200
    # with 2 choices, fast requests go to the host with fewer active requests
    counts = collections.Counter(x["upstream"] for x in a.requests + b.requests if x["path"] == "/")
    assert sum(counts.values()) == 10
    for b_ in busy:
        assert (await b_.response()).status == 200
        await b_.close()
    await c.close()


async def test_circuit_breaker_max_requests(upstreams, proxy):
    up = await upstreams()
    cb = {"thresholds": [{"max_requests": 1}]}
    p = await proxy(
        bootstrap([vhost([route("/")])], [cluster("up", [up.port], circuit_breakers=cb)])
    )
    a, b = await p.client(), await p.client()
    await a.send(b"GET /slow/200 HTTP/1.1\r\nhost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    r = await b.request()
    assert r.status == 503 and r.body.endswith(b"reset reason: overflow")
    assert (await a.response()).status == 200
    assert (await b.request()).status == 200
    assert p.counter("cluster.up.upstream_rq_pending_overflow") == 1
    await a.close()
    await b.close()


async def test_circuit_breaker_pending_overflow(upstreams, proxy):
    up = await upstreams()
    cb = {"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]}
    p = await proxy(
        bootstrap([vhost([route("/")])], [cluster("up", [up.port], circuit_breakers=cb)])
    )
    clients = [await p.client() for _ in range(3)]
    for c in clients:
        await c.send(b"GET /slow/200 HTTP/1.1\r\nhost: a\r\n\r\n")
        await asyncio.sleep(0.02)
    rs = [await c.response() for c in clients]
    codes = sorted(r.status for r in rs)
    assert codes == [200, 200, 503]
    over = next(r for r in rs if r.status == 503)
    assert over.body.endswith(b"reset reason: overflow")
    assert over.header("x-envoy-overloaded") == "true"
    assert p.counter("cluster.up.upstream_rq_pending_overflow") == 1
    assert p.counter("cluster.up.upstream_cx_overflow") >= 1
    assert up.connections == 1
    for c in clients:
        await c.close()


async def test_retry_on_5xx_and_connect_failure(upstreams, proxy):
    up = await upstreams()
    vh = vhost([route("/", retry_policy={"retry_on": "5xx", "num_retries": 2})])
    p = await proxy(bootstrap([vh], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/flaky/2")
    assert r.status == 200
    assert p.counter("cluster.up.upstream_rq_retry") == 2
    assert p.counter("cluster.up.upstream_rq_retry_success") == 1
    up.flaky = 0
    r = await c.request("POST", path="/flaky/5", body=b"payload")
    assert r.status == 503 and r.body == b"flaky"  # retries exhausted: last answer
    assert [x["body_length"] for x in up.requests[-3:]] == [7, 7, 7]
    await c.close()
    dead = free_port()
    vh = vhost([route("/", retry_policy={"retry_on": "connect-failure", "num_retries": 3})])
    p2 = await proxy(bootstrap([vh], [cluster("up", [dead, up.port])]))
    c = await p2.client()
    for _ in range(4):
        assert (await c.request(path="/ok")).status == 200
    assert p2.counter("cluster.up.upstream_cx_connect_fail") >= 1
    await c.close()


async def test_gateway_error_retry_is_not_5xx(upstreams, proxy):
    up = await upstreams()
    vh = vhost([route("/", retry_policy={"retry_on": "gateway-error", "num_retries": 1})])
    p = await proxy(bootstrap([vh], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(path="/status/500")
    assert r.status == 500
    assert p.counter("cluster.up.upstream_rq_retry") == 0
    r = await c.request(path="/status/502")
    assert r.status == 502
    assert p.counter("cluster.up.upstream_rq_retry") == 1
    await c.close()


async def test_strict_dns_cluster_resolves_localhost(upstreams, proxy):
    up = await upstreams()
    c_ = cluster("up", [up.port], type="STRICT_DNS", dns_refresh_rate="0.2s")
    c_["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]["address"] = "localhost"
    p = await proxy(bootstrap([vhost([route("/auto", auto_host_rewrite=True), route("/")])], [c_]))
    hosts = p.server.clusters["up"].hosts
    assert [(h.address, h.hostname) for h in hosts] == [("127.0.0.1", "localhost")]
    c = await p.client()
    assert (await c.request()).status == 200
    await asyncio.sleep(0.3)  # a refresh keeps the same host object and its pool
    assert p.server.clusters["up"].hosts[0] is hosts[0]
    assert (await c.request()).status == 200
    assert up.connections == 1
    r = await c.request(path="/auto", host="outside.example")
    assert r.upstream_header("host") == "localhost"
    await c.close()


async def test_per_try_timeout_retries_then_504(upstreams, proxy):
    up = await upstreams()
    rp = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s"}
    p = await proxy(
        bootstrap([vhost([route("/", timeout="5s", retry_policy=rp)])], [cluster("up", [up.port])])
    )
    c = await p.client()
    t0 = asyncio.get_running_loop().time()
    r = await c.request(path="/slow/1000")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert asyncio.get_running_loop().time() - t0 < 1.0  # two short tries, not 5 s
    assert [x["path"] for x in up.requests] == ["/slow/1000", "/slow/1000"]
    assert dict(up.requests[0]["headers"])["x-envoy-expected-rq-timeout-ms"] == "200"
    assert p.counter("cluster.up.upstream_rq_per_try_timeout") == 2
    assert p.counter("cluster.up.upstream_rq_retry") == 1
    r = await c.request(path="/slow/10")  # a fast attempt is unaffected
    assert r.status == 200
    await c.close()


async def test_header_value_operators(upstreams, proxy):
    up = await upstreams()
    vh = vhost(
        [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "up"},
                "request_headers_to_add": [
                    {
                        "header": {
                            "key": "x-client-ip",
                            "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                        }
                    },
                    {
                        "header": {
                            "key": "x-mix",
                            "value": "p=%PROTOCOL% ua=%REQ(user-agent)% 100%%",
                        }
                    },
                    {"header": {"key": "x-empty", "value": "%REQ(x-absent)%"}},
                ],
                "response_headers_to_add": [
                    {"header": {"key": "x-cluster", "value": "%UPSTREAM_CLUSTER%"}},
                    {"header": {"key": "x-host", "value": "%UPSTREAM_HOST%"}},
                ],
            }
        ]
    )
    p = await proxy(bootstrap([vh], [cluster("up", [up.port])]))
    c = await p.client()
    r = await c.request(headers={"user-agent": "fmt/1"})
    assert r.upstream_header("x-client-ip") == "127.0.0.1"
    assert r.upstream_header("x-mix") == "p=HTTP/1.1 ua=fmt/1 100%"
    assert r.upstream_header("x-empty") is None  # empty values are left out, as in Envoy
    assert r.header("x-cluster") == "up"
    assert r.header("x-host") == f"127.0.0.1:{up.port}"
    await c.close()


async def test_unknown_header_operator_is_a_config_error():
    from sofamesh._core.stats import Store
    from sofamesh.proxy.errors import UnsupportedConfig
    from sofamesh.proxy.server import Server

    vh = vhost(
        [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "up"},
                "request_headers_to_add": [{"header": {"key": "x", "value": "%NOPE%"}}],
            }
        ]
    )
    srv = Server(bootstrap([vh], [cluster("up", [1])]), stats=Store())
    with pytest.raises(UnsupportedConfig, match=r"request_headers_to_add.*%NOPE%"):
        await srv.start()
    await srv.stop()


async def test_client_gone_during_retry_backoff_frees_the_retry_budget(upstreams, proxy):
    up = await upstreams()
    rp = {
        "retry_on": "5xx",
        "num_retries": 5,
        "retry_back_off": {"base_interval": "1s", "max_interval": "2s"},
    }
    p = await proxy(bootstrap([vhost([route("/", retry_policy=rp)])], [cluster("up", [up.port])]))
    for _ in range(5):  # more than max_retries (3) abandoned retries in a row
        c = await p.client()
        await c.send(b"GET /status/503 HTTP/1.1\r\nhost: a\r\n\r\n")
        await asyncio.sleep(0.05)
        await c.close()
        await asyncio.sleep(0.05)
    assert p.server.clusters["up"].retries_active == 0
    assert p.counter("cluster.up.upstream_rq_retry_overflow") == 0
    c = await p.client()
    up.flaky = 0
    r = await c.request(path="/flaky/1")
    assert r.status == 200 and p.counter("cluster.up.upstream_rq_retry_success") == 1
    await c.close()


async def test_host_rewrite_header(upstreams, proxy):
    up = await upstreams("up")
    bs = bootstrap(
        [vhost([route("/", "up", host_rewrite_header="x-target-host")])], [cluster("up", [up.port])]
    )
    p = await proxy(bs)
    c = await p.client()
    r = await c.request("GET", "/h", headers={"x-target-host": "target.internal"}, host="a.test")
    assert r.upstream_header("host") == "target.internal"
    assert r.upstream_header("x-envoy-original-host") == "a.test"
    # header absent or empty: the Host stays, nothing recorded
    r = await c.request("GET", "/h", host="a.test")
    assert r.upstream_header("host") == "a.test"
    assert r.upstream_header("x-envoy-original-host") is None
    r = await c.request("GET", "/h", headers={"x-target-host": ""}, host="a.test")
    assert r.upstream_header("host") == "a.test"
    await c.close()


async def test_ring_hash_keeps_a_key_on_one_host(upstreams, proxy):
    a, b = await upstreams("a"), await upstreams("b")
    bs = bootstrap(
        [vhost([route("/", "ring", hash_policy=[{"header": {"header_name": "x-user"}}])])],
        [cluster("ring", [a.port, b.port], lb_policy="RING_HASH")],
    )
    p = await proxy(bs)
    c = await p.client()
    owner = {}
    for key in range(16):
        seen = set()
        for _ in range(4):
            r = await c.request("GET", "/k", headers={"x-user": f"user-{key}"})
            seen.add(r.json()["upstream"])
        assert len(seen) == 1, f"key {key} went to {seen}"
        owner[key] = seen.pop()
    assert set(owner.values()) == {"a", "b"}  # the ring spreads keys over both hosts
    await c.close()
