"""Quotas for Dubbo and Bolt calls by service and method (sofamesh.filters.rpc.local_ratelimit
in dubbo_filters / bolt_filters): real sofa-rpc-node Bolt and dubbo-remoting clients; calls
over the quota get the protocol's own error reply with their request id, the others pass,
and the filter's stats count both. sofamesh runs two workers: the buckets are shared."""

from __future__ import annotations

from collections import Counter

import pytest

from sofamesh._core.codecs import bolt, dubbo
from sofamesh._core.codecs.hessian import h2_encode_simple
from tests.conftest import sofamesh_command
from tests.support.envoy import ProxyProcess

from .conftest import (
    BOLT_TYPE,
    DUBBO_TYPE,
    SERVICE,
    NodeServer,
    RawUpstream,
    bootstrap,
    cluster,
    free_port,
    listener,
    node_client,
    raw_exchange,
    stats,
)

LOCAL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
HOUR = {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "3600s"}


def quota_filter(stat_prefix: str) -> dict:
    """plus on the test service: 3 calls an hour; svc.Silent's q: 1; everything else free."""
    return {
        "name": "sofamesh.filters.rpc.local_ratelimit",
        "config": {
            "@type": LOCAL_TYPE,
            "stat_prefix": stat_prefix,
            "descriptors": [
                {
                    "entries": [
                        {"key": "service", "value": SERVICE},
                        {"key": "method", "value": "plus"},
                    ],
                    "token_bucket": HOUR,
                },
                {
                    "entries": [
                        {"key": "service", "value": "svc.Silent"},
                        {"key": "method", "value": "q"},
                    ],
                    "token_bucket": {**HOUR, "max_tokens": 1, "tokens_per_fill": 1},
                },
            ],
        },
    }


def _any_route(interface: str, cluster_name: str) -> dict:
    return {
        "name": interface,
        "interface": interface,
        "routes": [
            {
                "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                "route": {"cluster": cluster_name},
            }
        ],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with (
        NodeServer(dubbo=True, tag="d") as dsrv,
        NodeServer(tag="b") as bsrv,
        RawUpstream("silent") as silent,
    ):
        dport, bport = free_port(), free_port()
        boot = bootstrap(
            [
                listener(
                    "dubbo",
                    dport,
                    [
                        {
                            "name": "envoy.filters.network.dubbo_proxy",
                            "typed_config": {
                                "@type": DUBBO_TYPE,
                                "stat_prefix": "din",
                                "route_config": [
                                    _any_route(SERVICE, "node"),
                                    _any_route("svc.Silent", "silent"),
                                ],
                                "dubbo_filters": [
                                    quota_filter("dquota"),
                                    {"name": "envoy.filters.dubbo.router"},
                                ],
                            },
                        }
                    ],
                ),
                listener(
                    "bolt",
                    bport,
                    [
                        {
                            "name": "sofamesh.filters.network.bolt_proxy",
                            "typed_config": {
                                "@type": BOLT_TYPE,
                                "stat_prefix": "bin",
                                "route_config": [
                                    _any_route(SERVICE, "bnode"),
                                    _any_route("svc.Silent", "silent"),
                                ],
                                "bolt_filters": [quota_filter("bquota")],
                            },
                        }
                    ],
                ),
            ],
            [
                cluster("node", [dsrv.port]),
                cluster("bnode", [bsrv.port]),
                cluster("silent", [silent.port]),
            ],
        )
        argv = [*sofamesh_command(), "proxy", "--concurrency", "2", "-l", "warning"]
        proxy = ProxyProcess("sofamesh", argv, boot, tmp_path_factory.mktemp("quota_rpc"))
        with proxy:
            yield {"proxy": proxy, "dubbo": dport, "bolt": bport}


@pytest.mark.parametrize("mode", ["dubbo", "bolt"])
def test_real_clients_over_the_method_quota_get_errors_others_pass(world, mode):
    prefix = "dquota" if mode == "dubbo" else "bquota"
    before = stats(world["proxy"])
    # four client processes (four connections, spread over the two workers by the kernel),
    # two plus calls each: the workers share one bucket of 3
    results = []
    for _ in range(4):
        results += node_client(
            world[mode],
            [
                {"method": "plus", "args": [40, 2]},
                {"method": "plus", "args": [1, 1]},
                {"method": "echo", "args": ["hi"]},
            ],
            mode=mode,
        )
    plus = [r for i, r in enumerate(results) if i % 3 != 2]
    echo = [r for i, r in enumerate(results) if i % 3 == 2]
    assert echo == [{"ok": True, "result": "hi"}] * 4  # another method: no quota
    ok = [r for r in plus if r["ok"]]
    refused = [r for r in plus if not r["ok"]]
    assert len(ok) == 3 and {r["result"] for r in ok} <= {42, 2}, plus
    assert len(refused) == 5, plus
    if mode == "dubbo":
        assert all("rate limited" in r["error"] for r in refused), refused
    after = stats(world["proxy"])

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    assert delta(f"{prefix}.rpc_local_rate_limit.ok") == 3
    assert delta(f"{prefix}.rpc_local_rate_limit.rate_limited") == 5
    # refused calls never reached the upstream
    assert delta(f"cluster.{'node' if mode == 'dubbo' else 'bnode'}.upstream_rq_total") == 7


def _dubbo_req(rid: int, service: str, method: str, **att) -> bytes:
    return dubbo.encode_request(rid, "2.0.2", service, "1.0", method, "I", h2_encode_simple(1), att)


def _bolt_req(rid: int, service: str, method: str) -> bytes:
    return bolt.BoltFrame(
        request_id=rid,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={"service": service, "sofa_head_method_name": method},
        content=b"\x91",
        timeout=200,
    ).encode()


def test_dubbo_refusal_carries_request_id_and_status(world):
    # the one token of svc.Silent/q: routed (the silent upstream never answers: timeout)
    (f,) = raw_exchange(
        world["dubbo"], _dubbo_req(5, "svc.Silent", "q", timeout="200"), dubbo.DubboDecoder(), 1
    )
    assert (f.request_id, f.status) == (5, dubbo.DUBBO_SERVER_TIMEOUT)
    rid = (1 << 62) + 11
    (g,) = raw_exchange(world["dubbo"], _dubbo_req(rid, "svc.Silent", "q"), dubbo.DubboDecoder(), 1)
    assert (g.request_id, g.status, g.is_request) == (
        rid,
        dubbo.DUBBO_SERVER_THREADPOOL_EXHAUSTED,
        False,
    )
    assert "rate limited" in g.error_message()


def test_bolt_refusal_carries_request_id_and_status(world):
    (f,) = raw_exchange(
        world["bolt"], _bolt_req(7001, "svc.Silent:1.0", "q"), bolt.BoltDecoder(), 1
    )
    assert (f.request_id, f.status) == (7001, bolt.STATUS_TIMEOUT)
    counts = Counter()
    for rid in (7002, 7003):
        (g,) = raw_exchange(
            world["bolt"], _bolt_req(rid, "svc.Silent:1.0", "q"), bolt.BoltDecoder(), 1
        )
        assert (g.request_id, g.type) == (rid, bolt.BOLT_TYPE_RESPONSE)
        counts[g.status] += 1
    assert counts == Counter({bolt.STATUS_SERVER_THREADPOOL_BUSY: 2})


def _dubbo_pacer(port: int, rate: float, seconds: float, statuses: Counter) -> None:
    """Open-loop Dubbo calls (plus on the test service) on one connection."""
    import socket
    import time

    dec = dubbo.DubboDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        i = 0
        while True:
            due = start + i / rate
            if due - start >= seconds:
                return
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            i += 1
            s.sendall(_dubbo_req(i, SERVICE, "plus"))
            got: list = []
            while not got:
                data = s.recv(65536)
                if not data:
                    raise AssertionError("the proxy closed the Dubbo connection")
                got = dec.feed(data)
            statuses[got[0].status] += 1


def test_one_rlqs_bucket_shared_by_http_requests_and_dubbo_calls(tmp_path):
    """sofamesh.filters.rpc.rate_limit_quota and envoy.filters.http.rate_limit_quota name the
    same bucket: the mixer's one limit of 6/s covers HTTP requests and Dubbo calls together
    (each alone would get 6/s from a limit of its own)."""
    import threading
    import time

    from tests.integration.mixer.conftest import MixerProcess, http_bootstrap
    from tests.integration.mixer.test_global_quota import Pacer
    from tests.integration.mixer.test_mixer_envoy import RLQ, rlqs_filter
    from tests.support.http_upstream import RecordingUpstream

    limit, seconds = 6, 8
    mixer = MixerProcess(
        tmp_path,
        f"quotas:\n  - domain: mesh\n    bucket: {{name: checkout}}\n"
        f"    requests_per_second: {limit}\n",
    ).start()
    rpc_rlqs = rlqs_filter()
    rpc_rlqs["name"] = "sofamesh.filters.rpc.rate_limit_quota"
    rpc_rlqs["config"] = cfg = rpc_rlqs.pop("typed_config")
    assert cfg["@type"] == RLQ
    action = cfg["bucket_matchers"].pop("on_no_match")
    cfg["bucket_matchers"]["matcher_list"] = {
        "matchers": [
            {
                "predicate": {
                    "single_predicate": {
                        "input": {
                            "name": "service",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.type.matcher.v3"
                                ".HttpRequestHeaderMatchInput",
                                "header_name": ":service",
                            },
                        },
                        "value_match": {"exact": SERVICE},
                    }
                },
                "on_match": action,
            }
        ]
    }
    with NodeServer(dubbo=True, tag="q") as dsrv, RecordingUpstream(["a"]) as up:
        listen, dport = free_port(), free_port()
        boot = http_bootstrap(
            node="quota",
            admin=free_port(),
            listen=listen,
            app=up.ports["a"],
            mixer=mixer.grpc_port,
            http_filters=[rlqs_filter()],
        )
        for c in boot["static_resources"]["clusters"]:
            c.pop("typed_extension_protocol_options", None)
        boot["static_resources"]["clusters"].append(cluster("node", [dsrv.port]))
        boot["static_resources"]["listeners"].append(
            listener(
                "dubbo",
                dport,
                [
                    {
                        "name": "envoy.filters.network.dubbo_proxy",
                        "typed_config": {
                            "@type": DUBBO_TYPE,
                            "stat_prefix": "dq",
                            "route_config": [_any_route(SERVICE, "node")],
                            "dubbo_filters": [rpc_rlqs, {"name": "envoy.filters.dubbo.router"}],
                        },
                    }
                ],
            )
        )
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / "sidecar")
        try:
            proxy.start()
            warm: Counter = Counter()
            _dubbo_pacer(dport, 10, 1.0, warm)  # the RPC bucket's first report
            Pacer(listen, 10, 1.0).run()
            deadline = time.monotonic() + 10
            while (
                len(
                    [
                        ln
                        for ln in mixer.get("/metrics")[1].splitlines()
                        if ln.startswith("sofamesh_mixer_quota_assigned{")
                    ]
                )
                < 2
            ):
                assert time.monotonic() < deadline, "both streams of the bucket at the mixer"
                time.sleep(0.1)
            time.sleep(2.0)  # shares settle
            rpc: Counter = Counter()
            http_load = Pacer(listen, 12, seconds)
            rpc_load = threading.Thread(target=_dubbo_pacer, args=(dport, 12, seconds, rpc))
            t0 = time.monotonic()
            http_load.start()
            rpc_load.start()
            http_load.join()
            rpc_load.join()
            elapsed = time.monotonic() - t0
        finally:
            proxy.stop()
            mixer.stop()
    assert http_load.error is None, http_load.error
    http_ok = http_load.codes.get(200, 0)
    rpc_ok = sum(n for st, n in rpc.items() if st != dubbo.DUBBO_SERVER_THREADPOOL_EXHAUSTED)
    print(f"limit {limit}/s over {elapsed:.1f} s: http {http_load.codes}, dubbo {dict(rpc)}")
    assert http_load.codes.get(429, 0) > 0 and rpc[dubbo.DUBBO_SERVER_THREADPOOL_EXHAUSTED] > 0
    total = http_ok + rpc_ok
    assert 0.7 * limit * elapsed <= total <= 1.3 * limit * elapsed, (total, elapsed)
    assert http_ok >= 0.25 * limit * elapsed and rpc_ok >= 0.25 * limit * elapsed
