"""envoy.filters.http.ratelimit in sofamesh against Envoy 1.40: the same bootstrap through both
proxies, `sofamesh mixer` (one per proxy, same policy) or a recording rate-limit service as
the RLS: allowed, over limit (429 + x-envoy-ratelimited, x-ratelimit-* headers), the
descriptors each route action sends, the service down or slow past `timeout` with
failure_mode_deny true and false, and the `cluster.<cluster>.ratelimit.*` stats."""

from __future__ import annotations

import http.client
import threading
import time
from concurrent import futures
from typing import Self

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

RLS = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
STATS = (
    "cluster.app.ratelimit.ok",
    "cluster.app.ratelimit.over_limit",
    "cluster.app.ratelimit.error",
    "cluster.app.ratelimit.failure_mode_allowed",
    "cluster.app.upstream_rq_429",
)
POLICY = (
    "ratelimits:\n"
    "  - domain: mesh\n"
    "    descriptor: [{key: user, value: alice}]\n"
    "    requests_per_unit: 3\n"
    "    unit: day\n"
    "  - domain: mesh\n"
    "    descriptor: [{key: user}]\n"
    "    requests_per_unit: 1000\n"
    "    unit: day\n"
)


def ratelimit_filter(deny: bool = False, timeout: str = "1s", **extra) -> dict:
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": RLS,
            "domain": "mesh",
            "failure_mode_deny": deny,
            "timeout": timeout,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
            },
            **extra,
        },
    }


class RecordingRls:
    """A rate-limit service that records each request's (domain, descriptors) and answers
    OVER_LIMIT when a descriptor holds an entry value in `over`, after `delay` seconds."""

    def __init__(self, delay: float = 0.0, over: tuple[str, ...] = (), extras: bool = False):
        self.delay = delay
        self.over = set(over)
        self.extras = extras  # answer with headers to add and an over-limit body
        self.requests: list[tuple[str, list[list[tuple[str, str]]]]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def ShouldRateLimit(self, request, context):
        descs = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        with self._lock:
            self.requests.append((request.domain, descs))
        if self.delay:
            time.sleep(self.delay)
        resp = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for d in descs:
            over = any(v in self.over for _, v in d)
            st = resp.statuses.add(
                code=rls_pb2.RateLimitResponse.OVER_LIMIT if over else rls_pb2.RateLimitResponse.OK
            )
            if over:
                resp.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
            st.current_limit.requests_per_unit = 10
            st.current_limit.unit = rls_pb2.RateLimitResponse.RateLimit.MINUTE
            st.limit_remaining = 0 if over else 7
            st.duration_until_reset.seconds = 42
        if self.extras:
            resp.response_headers_to_add.add(key="x-rl-resp", value="r1")
            resp.request_headers_to_add.add(key="x-rl-req", value="q1")
            if resp.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT:
                resp.raw_body = b"slow down\n"
        return resp

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)

    def take(self) -> list:
        with self._lock:
            out, self.requests = self.requests, []
        return out


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _bootstrap(node: str, rls_port: int, app: int, **kw) -> dict:
    admin, listen = free_ports(2)
    return http_bootstrap(node=node, admin=admin, listen=listen, app=app, mixer=rls_port, **kw)


def _pair(tmp_path, rls_ports: tuple[int, int], app: int, **kw) -> list[ProxyProcess]:
    """Envoy and sofamesh on the same bootstrap (their own ports; RLS ports may differ)."""
    e = ProxyProcess.envoy(
        envoy_binary(), _bootstrap("sidecar", rls_ports[0], app, **kw), tmp_path / "envoy"
    )
    s = ProxyProcess.sofamesh(
        sofamesh_command(), _bootstrap("sidecar", rls_ports[1], app, **kw), tmp_path / "sofamesh"
    )
    e.start()
    try:
        s.start()
    except Exception:
        e.stop()
        raise
    return [e, s]


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def _get(p: ProxyProcess, path: str = "/", headers: dict | None = None):
    """(status, headers (lower-case names), body) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", _listen(p), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def _stats(p: ProxyProcess) -> dict[str, int]:
    _, text = admin_get(p.bootstrap["admin"]["address"]["socket_address"]["port_value"], "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k in STATS:
            out[k] = int(v)
    return {k: out.get(k, 0) for k in STATS}


def _wait_stats(p: ProxyProcess, want: dict[str, int], timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    got = _stats(p)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = _stats(p)
    return got


def _shown(r) -> tuple:
    """What a client sees of a response, less what varies by proxy or time (the upstream's
    answer counts its requests: a proxied body is left out)."""
    status, headers, body = r
    keep = {
        k: v
        for k, v in headers.items()
        if k.startswith("x-ratelimit") or k in ("x-envoy-ratelimited", "content-length")
    }
    if body.startswith(b"upstream="):
        keep.pop("content-length", None)
        return status, keep, "(proxied)"
    return status, keep, body


def test_mixer_allows_then_429_as_envoy(tmp_path, mixer_factory, upstream):
    mixers = [mixer_factory(POLICY), mixer_factory(POLICY)]
    action = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}
    procs = _pair(
        tmp_path,
        (mixers[0].grpc_port, mixers[1].grpc_port),
        upstream.ports["a"],
        http_filters=[ratelimit_filter(enable_x_ratelimit_headers="DRAFT_VERSION_03")],
        rate_limits=[action],
    )
    try:
        seen = []
        for p in procs:
            alice = [_get(p, "/", {"x-user": "alice"}) for _ in range(5)]
            bob = [_get(p, "/", {"x-user": "bob"}) for _ in range(2)]
            nobody = [_get(p, "/")]  # no header: no descriptor, no call
            seen.append([_shown(r) for r in alice + bob + nobody])
        envoy, sofa = seen
        assert [r[0] for r in envoy] == [200, 200, 200, 429, 429, 200, 200, 200]
        for i, (a, b) in enumerate(zip(envoy, sofa, strict=True)):
            ra = {k: v for k, v in a[1].items() if k != "x-ratelimit-reset"}
            rb = {k: v for k, v in b[1].items() if k != "x-ratelimit-reset"}
            assert (a[0], ra, a[2]) == (b[0], rb, b[2]), i
            # the window's end, in seconds: the same for both within the test's duration
            if "x-ratelimit-reset" in a[1] or "x-ratelimit-reset" in b[1]:
                assert abs(int(a[1]["x-ratelimit-reset"]) - int(b[1]["x-ratelimit-reset"])) < 30
        assert envoy[3][1]["x-envoy-ratelimited"] == "true"
        assert envoy[0][1]["x-ratelimit-limit"] == "3, 3;w=86400"
        assert [m.metric("sofamesh_mixer_ratelimit_checks_total") for m in mixers] == [7, 7]
        want = {
            "cluster.app.ratelimit.ok": 5,
            "cluster.app.ratelimit.over_limit": 2,
            "cluster.app.ratelimit.error": 0,
            "cluster.app.ratelimit.failure_mode_allowed": 0,
            "cluster.app.upstream_rq_429": 2,
        }
        assert _stats(procs[0]) == want
        assert _stats(procs[1]) == want
    finally:
        for p in procs:
            p.stop()


def test_route_actions_send_the_descriptors_envoy_sends(tmp_path, upstream):
    limits = [
        {"actions": [{"generic_key": {"descriptor_value": "all"}}]},
        {"actions": [{"generic_key": {"descriptor_key": "tier", "descriptor_value": "gold"}}]},
        {"actions": [{"remote_address": {}}, {"destination_cluster": {}}]},
        {"actions": [{"source_cluster": {}}]},
        {
            "actions": [
                {
                    "header_value_match": {
                        "descriptor_value": "beta",
                        "headers": [{"name": "x-beta", "string_match": {"exact": "1"}}],
                    }
                }
            ]
        },
        {
            "actions": [
                {
                    "header_value_match": {
                        "descriptor_key": "not_beta",
                        "descriptor_value": "yes",
                        "expect_match": False,
                        "headers": [{"name": "x-beta", "present_match": True}],
                    }
                }
            ]
        },
        {
            "actions": [
                {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}},
                {
                    "request_headers": {
                        "header_name": "x-org",
                        "descriptor_key": "org",
                        "skip_if_absent": True,
                    }
                },
            ]
        },
        {"stage": 1, "actions": [{"generic_key": {"descriptor_value": "stage1"}}]},
        {"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 24}}]},
    ]
    cases = [
        ("/", {}),
        ("/", {"x-beta": "1"}),
        ("/", {"x-beta": "2", "x-user": "u1"}),
        ("/", {"x-user": "u2", "x-org": "o2"}),
        ("/", {"x-org": "o3"}),
    ]
    with RecordingRls() as e_rls, RecordingRls() as s_rls:
        procs = _pair(
            tmp_path,
            (e_rls.port, s_rls.port),
            upstream.ports["a"],
            http_filters=[ratelimit_filter()],
            rate_limits=limits,
        )
        try:
            got: list = []
            for p, rls in zip(procs, (e_rls, s_rls), strict=True):
                statuses = [_get(p, path, h)[0] for path, h in cases]
                assert statuses == [200] * len(cases)
                got.append(rls.take())
            assert len(got[0]) == len(cases)
            assert got[0] == got[1]
            assert got[0][0] == (
                "mesh",
                [
                    [("generic_key", "all")],
                    [("tier", "gold")],
                    [("remote_address", "127.0.0.1"), ("destination_cluster", "app")],
                    [("source_cluster", "sidecar")],
                    [("not_beta", "yes")],
                    [("masked_remote_address", "127.0.0.0/24")],
                ],
            )
        finally:
            for p in procs:
                p.stop()


def _vh_bootstrap_routes(b: dict, include: bool | None) -> None:
    """A virtual host with rate_limits; its route /own has its own, /none has none."""
    vh = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]
    vh["rate_limits"] = [{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}]
    own: dict = {
        "cluster": "app",
        "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "route"}}]}],
    }
    if include is not None:
        own["include_vh_rate_limits"] = include
    vh["routes"] = [
        {"match": {"prefix": "/own"}, "route": own},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}},
    ]


@pytest.mark.parametrize("include", [None, True])
def test_virtual_host_rate_limits_as_envoy(tmp_path, upstream, include):
    with RecordingRls() as e_rls, RecordingRls() as s_rls:
        bs = [
            _bootstrap("sidecar", port, upstream.ports["a"], http_filters=[ratelimit_filter()])
            for port in (e_rls.port, s_rls.port)
        ]
        for b in bs:
            _vh_bootstrap_routes(b, include)
        procs = [
            ProxyProcess.envoy(envoy_binary(), bs[0], tmp_path / "envoy").start(),
            ProxyProcess.sofamesh(sofamesh_command(), bs[1], tmp_path / "sofamesh").start(),
        ]
        try:
            got = []
            for p, rls in zip(procs, (e_rls, s_rls), strict=True):
                assert [_get(p, "/own")[0], _get(p, "/other")[0]] == [200, 200]
                got.append(rls.take())
            assert got[0] == got[1]
            own = [[("generic_key", "route")]] + ([[("generic_key", "vh")]] if include else [])
            assert got[0] == [("mesh", own), ("mesh", [[("generic_key", "vh")]])]
        finally:
            for p in procs:
                p.stop()


def _error_case(tmp_path, rls_ports, app, deny: bool, timeout: str = "1s") -> list[ProxyProcess]:
    return _pair(
        tmp_path,
        rls_ports,
        app,
        http_filters=[ratelimit_filter(deny=deny, timeout=timeout)],
        rate_limits=[{"actions": [{"generic_key": {"descriptor_value": "all"}}]}],
    )


@pytest.mark.parametrize("deny", [True, False])
def test_service_down_failure_mode_as_envoy(tmp_path, upstream, deny):
    down = free_port()  # nothing listens there
    procs = _error_case(tmp_path, (down, down), upstream.ports["a"], deny)
    try:
        seen = [[_shown(_get(p)) for _ in range(3)] for p in procs]
        assert seen[0] == seen[1]
        assert [r[0] for r in seen[0]] == ([500] * 3 if deny else [200] * 3)
        want = dict.fromkeys(STATS, 0)
        want["cluster.app.ratelimit.error"] = 3
        want["cluster.app.ratelimit.failure_mode_allowed"] = 0 if deny else 3
        assert _stats(procs[0]) == want
        assert _stats(procs[1]) == want
    finally:
        for p in procs:
            p.stop()


@pytest.mark.parametrize("deny", [True, False])
def test_service_slow_past_timeout_as_envoy(tmp_path, upstream, deny):
    with RecordingRls(delay=1.5) as e_rls, RecordingRls(delay=1.5) as s_rls:
        procs = _error_case(
            tmp_path, (e_rls.port, s_rls.port), upstream.ports["a"], deny, timeout="0.2s"
        )
        try:
            for p in procs:
                _get(p)  # the first call also connects to the service
            seen = []
            for p in procs:
                t0 = time.monotonic()
                seen.append([_shown(_get(p)) for _ in range(2)])
                elapsed = time.monotonic() - t0
                assert elapsed < 1.4, (p.name, elapsed)  # the timeout, not the service's delay
            assert seen[0] == seen[1]
            assert [r[0] for r in seen[0]] == ([500] * 2 if deny else [200] * 2)
            want = dict.fromkeys(STATS, 0)
            want["cluster.app.ratelimit.error"] = 3
            want["cluster.app.ratelimit.failure_mode_allowed"] = 0 if deny else 3
            assert _stats(procs[0]) == want
            assert _stats(procs[1]) == want
        finally:
            for p in procs:
                p.stop()


def test_slow_service_stops_only_its_own_streams(tmp_path, upstream):
    """Eight requests waiting for a slow service wait together, and a request on a route
    without rate limits is answered meanwhile."""
    with RecordingRls(delay=1.0) as rls:
        b = _bootstrap("sidecar", rls.port, upstream.ports["a"], http_filters=[ratelimit_filter()])
        vh = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ]["route_config"]["virtual_hosts"][0]
        vh["routes"] = [
            {
                "match": {"prefix": "/limited"},
                "route": {
                    "cluster": "app",
                    "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "x"}}]}],
                },
            },
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}},
        ]
        p = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / "sofamesh").start()
        try:
            _get(p, "/limited")  # connects to the service
            results: list = []
            t0 = time.monotonic()
            threads = [
                threading.Thread(target=lambda: results.append(_get(p, "/limited")[0]))
                for _ in range(8)
            ]
            for t in threads:
                t.start()
            while len(rls.requests) < 2 + 1 and time.monotonic() - t0 < 0.9:
                time.sleep(0.01)
            t1 = time.monotonic()
            assert _get(p, "/free")[0] == 200
            free_s = time.monotonic() - t1
            for t in threads:
                t.join()
            total = time.monotonic() - t0
            assert results == [200] * 8
            print(f"8 limited requests in {total:.2f} s; a free one in {free_s * 1000:.0f} ms")
            assert total < 3.0, total  # together (~1 s), not one after another (8 s)
            assert free_s < 0.5, free_s
        finally:
            p.stop()


@pytest.mark.parametrize("body", [b"", b"x" * 70000])
def test_http2_downstream_as_envoy(tmp_path, upstream, body):
    """Over HTTP/2 (h2c from the `h2` library), with and without a request body arriving
    while the stream waits for the service: the same answers, and the body reaches the
    upstream whole."""
    from tests.support.h2_peers import h2_exchange

    action = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}
    with (
        RecordingRls(delay=0.2, over=("blocked",)) as e_rls,
        RecordingRls(delay=0.2, over=("blocked",)) as s_rls,
    ):
        procs = _pair(
            tmp_path,
            (e_rls.port, s_rls.port),
            upstream.ports["a"],
            http_filters=[ratelimit_filter()],
            rate_limits=[action],
        )
        try:
            seen = []
            for p in procs:
                out = []
                for user in ("ok", "blocked"):
                    hdrs = [
                        (":method", "POST" if body else "GET"),
                        (":scheme", "http"),
                        (":authority", "svc"),
                        (":path", f"/h2/{user}"),
                        ("x-user", user),
                    ]
                    ex = h2_exchange(_listen(p), hdrs, body or None)
                    h = dict(ex.headers)
                    out.append(
                        (
                            ex.status,
                            h.get("x-envoy-ratelimited"),
                            ex.body if ex.status != 200 else b"",
                            ex.reset,
                        )
                    )
                seen.append(out)
            assert seen[0] == seen[1]
            assert [s[0] for s in seen[0]] == [200, 429]
            assert seen[0][1][1] == "true"
            got = [r for r in upstream.records if r.target == "/h2/ok"]
            assert len(got) == 2
            assert all(r.body == body for r in got)
            assert not [r for r in upstream.records if r.target == "/h2/blocked"]
        finally:
            for p in procs:
                p.stop()


def test_service_headers_and_body_as_envoy(tmp_path, upstream):
    """The service's response_headers_to_add (on the answer, allowed or limited),
    request_headers_to_add (to the upstream request) and raw_body (the 429's body), and
    the filter's own response_headers_to_add and rate_limited_status."""
    action = {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}
    extra = {
        "rate_limited_status": {"code": 503},
        "response_headers_to_add": [{"header": {"key": "x-limited-by", "value": "mixer"}}],
    }
    with (
        RecordingRls(over=("blocked",), extras=True) as e_rls,
        RecordingRls(over=("blocked",), extras=True) as s_rls,
    ):
        procs = _pair(
            tmp_path,
            (e_rls.port, s_rls.port),
            upstream.ports["a"],
            http_filters=[ratelimit_filter(**extra)],
            rate_limits=[action],
        )
        try:
            seen = []
            for p in procs:
                out = []
                for user in ("ok", "blocked"):
                    status, headers, body = _get(p, f"/{user}", {"x-user": user})
                    keep = {
                        k: v
                        for k, v in headers.items()
                        if k in ("x-rl-resp", "x-limited-by", "x-envoy-ratelimited")
                    }
                    out.append((status, keep, body if status != 200 else b""))
                seen.append(out)
            assert seen[0] == seen[1]
            assert seen[0][0] == (200, {"x-rl-resp": "r1"}, b"")
            assert seen[0][1][0] == 503 and seen[0][1][2] == b"slow down\n"
            ok = [r for r in upstream.records if r.target == "/ok"]
            assert len(ok) == 2
            assert all(("x-rl-req", "q1") in [(k.lower(), v) for k, v in r.headers] for r in ok)
        finally:
            for p in procs:
                p.stop()
