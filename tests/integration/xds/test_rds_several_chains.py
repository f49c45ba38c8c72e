"""HCM `rds` in a listener with several filter chains (Istio's 0.0.0.0:80 outbound listener
and virtualInbound have several HCM chains, each with its own route config), given over ADS
to real Envoy 1.40 and to `sofamesh proxy` (1 worker and 2), with the same checks on each.

One listener, four chains picked by the client's source address (filter_chain_match
source_prefix_ranges, driven from 127.0.0.x): 127.0.0.2 and 127.0.0.4 name route config
`ra`, 127.0.0.3 names `rb`, any other source gets the default chain, whose route config is
inline. Checked: the server does not initialize and the listener does not serve until both
route configs have arrived; each chain routes by its own; an update of `rb` changes the
127.0.0.3 chain only, at once for new requests, while a request in flight finishes on the
old table and its connection stays open; a route config left out (SotW) or removed (Delta)
changes nothing; a listener added later warms until its chains' route configs arrive."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.xds_server import ScriptedAds

pytestmark = pytest.mark.timeout(180)

_T = "type.googleapis.com/envoy."
LDS = _T + "config.listener.v3.Listener"
RDS = _T + "config.route.v3.RouteConfiguration"
HCM = _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = _T + "extensions.filters.http.router.v3.Router"
SIDECARS = ("envoy", "sofamesh", "sofamesh-2-workers")
# Istio's config sources: wait for ever for the first config (initial_fetch_timeout 0s)
ADS = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def _route_config(name: str, cluster: str) -> dict:
    return {
        "name": name,
        "virtual_hosts": [
            {"name": "all", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}
        ],
    }  # fmt: skip


def _hcm_chain(stat_prefix: str, src: str | None, rds: str = "", inline: str = "") -> dict:
    hcm: dict = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if rds:
        hcm["rds"] = {"route_config_name": rds, "config_source": ADS}
    else:
        hcm["route_config"] = _route_config("inline", inline)
    chain: dict = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if src is not None:
        chain["filter_chain_match"] = {
            "source_prefix_ranges": [{"address_prefix": src, "prefix_len": 32}]
        }
    return chain


def listener(name: str, port: int, ra: str = "ra", rb: str = "rb") -> dict:
    """Chains by source address: .2 and .4 -> route config `ra`, .3 -> `rb`, else inline."""
    return {
        "name": name,
        "address": _addr(port),
        "filter_chains": [
            _hcm_chain("chain_a", "127.0.0.2", rds=ra),
            _hcm_chain("chain_b", "127.0.0.3", rds=rb),
            _hcm_chain("chain_a", "127.0.0.4", rds=ra),
        ],
        "default_filter_chain": _hcm_chain("chain_inline", None, inline="c"),
    }


def _msg(type_url: str, d: dict):
    from sofamesh.config import protos
    from sofamesh.xds.client import message_class

    protos.import_all()
    return json_format.ParseDict(d, message_class(type_url)())


def bootstrap(admin: int, xds_port: int, delta: bool, ports: dict[str, int]) -> dict:
    xds = _cluster("xds-grpc", xds_port)
    xds["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": "sidecar~127.0.0.1~t.ns~ns.svc.cluster.local", "cluster": "t.ns"},
        "admin": {"address": _addr(admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": ADS,
        },
        "static_resources": {
            "clusters": [xds, *(_cluster(n, p) for n, p in ports.items())],
        },
    }


def launch(kind: str, boot: dict, workdir: Path) -> ProxyProcess:
    """Starts the proxy without waiting for /ready (its initialization is what is tested)."""
    if kind == "envoy":
        p = ProxyProcess.envoy(envoy_binary(), boot, workdir)
    else:
        workers = 2 if kind.endswith("workers") else 1
        p = ProxyProcess.sofamesh(sofamesh_command(), boot, workdir, concurrency=workers)
    with open(p.log_path, "wb") as log:
        p.proc = subprocess.Popen(
            p.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return p


def who(port: int, src: str, conn: http.client.HTTPConnection | None = None, delay: int = 0):
    """The upstream that answers a request from source address `src` (or its status, or the
    error); on `conn` when given (kept open), else on a new connection."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(src, 0))
    try:
        headers = {"x-upstream-action": f"delay={delay}"} if delay else {}
        c.request("GET", "/", headers=headers)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
    except OSError as e:
        return type(e).__name__
    finally:
        if conn is None:
            c.close()
    return body.split()[0].removeprefix("upstream=") if r.status == 200 else str(r.status)


def routing(port: int) -> dict[str, str]:
    return {src: who(port, src) for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")}


def routing_all(port: int, n: int = 6) -> dict[str, str] | list:
    """routing() on `n` rounds of new connections (with workers, the kernel spreads them):
    the one answer all gave, else all of them."""
    got = [routing(port) for _ in range(n)]
    return got[0] if all(g == got[0] for g in got) else got


def worker_cx(admin: int, port: int) -> dict[int, int]:
    """listener.127.0.0.1_<port>.worker_<i>.downstream_cx_total, by worker."""
    pat = re.compile(rf"^listener\.127\.0\.0\.1_{port}\.worker_(\d+)\.downstream_cx_total$")
    return {int(m.group(1)): v for k, v in stats(admin).items() if (m := pat.match(k))}


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def ready(admin: int) -> int:
    try:
        return admin_get(admin, "/ready")[0]
    except OSError:
        return 0


def stats(admin: int) -> dict[str, int]:
    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def eventually(fn, want, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = fn()
        if got == want:
            return got
        time.sleep(0.05)
    return got


@pytest.fixture
def upstreams():
    up = RecordingUpstream(["alpha", "beta", "gamma", "delta"]).start()
    yield up
    up.stop()


@pytest.mark.parametrize("mode", ["sotw", "delta"])
@pytest.mark.parametrize("kind", SIDECARS)
async def test_rds_per_filter_chain(tmp_path, upstreams, kind, mode):
    delta = mode == "delta"
    ads = ScriptedAds()
    server = grpc.aio.server()
    from envoy.service.discovery.v3 import ads_pb2_grpc

    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports = upstreams.ports
    clusters = {"a": ports["alpha"], "b": ports["beta"], "c": ports["gamma"], "d": ports["delta"]}
    lport, lport2, admin = free_port(), free_port(), free_port()
    ra, rb = _msg(RDS, _route_config("ra", "a")), _msg(RDS, _route_config("rb", "b"))
    ads.push(LDS, "l1", [_msg(LDS, listener("multi", lport))])
    ads.push(RDS, "r1", [ra])  # `rb` not yet
    proxy = None
    run = asyncio.to_thread
    try:
        proxy = await run(launch, kind, bootstrap(admin, xds_port, delta, clusters), tmp_path)
        await ads.acked(LDS, timeout=30)
        await ads.acked(RDS, timeout=30)
        # one route config of two: the server is still initializing, the listener not served
        await asyncio.sleep(1.0)
        assert await run(ready, admin) == 503
        assert await run(who, lport, "127.0.0.2") == "ConnectionRefusedError"
        s = await run(stats, admin)
        assert s["http.chain_a.rds.ra.update_success"] == 1
        assert s["http.chain_b.rds.rb.update_success"] == 0
        # each name subscribed once, both together (the inline chain subscribes to nothing)
        asked = {n for r in ads.requests if r.type_url == RDS for n in _names(r, delta)}
        assert asked == {"ra", "rb"}, asked

        ads.push(RDS, "r2", [rb] if delta else [ra, rb])
        await ads.acked(RDS)
        assert await run(eventually, lambda: ready(admin), 200) == 200
        want = {"127.0.0.2": "alpha", "127.0.0.3": "beta", "127.0.0.4": "alpha",
                "127.0.0.5": "gamma"}  # fmt: skip
        assert await run(routing, lport) == want
        s = await run(stats, admin)
        assert s["listener_manager.total_listeners_active"] == 1
        assert s["listener_manager.total_listeners_warming"] == 0
        assert s["listener_manager.listener_added"] == 1
        assert s[f"listener.127.0.0.1_{lport}.downstream_cx_total"] >= 4
        # an update accepted is counted (SotW sends `ra` again), once though two chains use it
        assert s["http.chain_a.rds.ra.update_success"] == (1 if delta else 2)
        assert s["http.chain_a.rds.ra.config_reload"] == 1
        assert s["http.chain_b.rds.rb.update_success"] == 1
        assert s["http.chain_b.rds.rb.config_reload"] == 1

        # `rb` changes while a request is in flight on chain b's kept-alive connection: it
        # finishes on the old table, the next request on that connection takes the new one
        conn = http.client.HTTPConnection(
            "127.0.0.1", lport, timeout=10, source_address=("127.0.0.3", 0)
        )
        assert await run(who, lport, "127.0.0.3", conn) == "beta"
        slow: list = []
        t = threading.Thread(target=lambda: slow.append(who(lport, "127.0.0.3", conn, 1500)))
        t.start()
        await asyncio.sleep(0.5)
        rb2 = _msg(RDS, _route_config("rb", "d"))
        ads.push(RDS, "r3", [rb2] if delta else [ra, rb2])
        await ads.acked(RDS)
        assert await run(eventually, lambda: who(lport, "127.0.0.3"), "delta") == "delta"
        # only the chain naming `rb` changed, whichever worker serves the connection
        assert await run(routing_all, lport) == {**want, "127.0.0.3": "delta"}
        if kind.endswith("workers"):
            per_worker = await run(worker_cx, admin, lport)
            assert sorted(per_worker) == [0, 1] and all(per_worker.values()), per_worker
        await run(t.join)
        assert slow == ["beta"]
        assert await run(who, lport, "127.0.0.3", conn) == "delta"  # same connection
        conn.close()
        s = await run(stats, admin)
        assert s.get("listener_manager.listener_modified", 0) == 0
        assert s["http.chain_b.rds.rb.update_success"] == 2
        assert s["http.chain_a.rds.ra.update_success"] == (1 if delta else 3)
        assert s["http.chain_a.rds.ra.config_reload"] == 1
        assert s["http.chain_b.rds.rb.config_reload"] == 2

        # `rb` left out of a SotW response / removed by Delta: its chain keeps its routes
        ads.push(RDS, "r4", [ra], removed=("rb",) if delta else ())
        await ads.acked(RDS)
        await asyncio.sleep(0.5)
        assert await run(routing_all, lport) == {**want, "127.0.0.3": "delta"}
        if kind.endswith("workers"):  # a worker restarted gets the same (the pool's held)
            kids = children(proxy.pid)
            assert len(kids) == 2, kids
            os.kill(kids[0], signal.SIGKILL)
            deaths = lambda: stats(admin).get("server.worker_deaths")
            assert await run(eventually, deaths, 1, 20) == 1
            fresh = lambda: len([k for k in children(proxy.pid) if k not in kids])
            assert await run(eventually, fresh, 1, 20) == 1
            started = lambda: stats(admin).get("listener_manager.workers_started")
            assert await run(eventually, started, 2, 20) == 2
            assert await run(routing_all, lport, 10) == {**want, "127.0.0.3": "delta"}

        # a listener added later names `rc`, not yet sent: it warms, the first keeps serving
        ads.push(
            LDS,
            "l2",
            [_msg(LDS, listener("multi", lport)), _msg(LDS, listener("multi2", lport2, rb="rc"))],
        )
        await ads.acked(LDS)
        await asyncio.sleep(0.5)
        s = await run(stats, admin)
        assert s["listener_manager.total_listeners_warming"] == 1
        assert s["listener_manager.total_listeners_active"] == 1
        assert await run(ready, admin) == 200
        assert await run(who, lport2, "127.0.0.2") == "ConnectionRefusedError"
        assert await run(routing, lport) == {**want, "127.0.0.3": "delta"}
        rc = _msg(RDS, _route_config("rc", "c"))
        ads.push(RDS, "r5", [rc] if delta else [ra, rb2, rc])
        await ads.acked(RDS)
        got = await run(eventually, lambda: routing(lport2), {**want, "127.0.0.3": "gamma"})
        assert got == {**want, "127.0.0.3": "gamma"}
        s = await run(stats, admin)
        assert s["listener_manager.total_listeners_warming"] == 0
        assert s["listener_manager.total_listeners_active"] == 2

        # /config_dump shows the dynamic route configs with their versions
        _, dump = await run(admin_get, admin, "/config_dump")
        by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(dump)["configs"]}
        dyn = by_type["RoutesConfigDump"]["dynamic_route_configs"]
        versions = {r["route_config"]["name"]: r["version_info"] for r in dyn}
        assert versions == {"ra": "r1", "rb": "r3", "rc": "r5"}, versions
    finally:
        if proxy is not None:
            await run(proxy.stop)
        await server.stop(None)


def _names(req, delta: bool) -> list[str]:
    return list(req.resource_names_subscribe) if delta else list(req.resource_names)


@pytest.mark.parametrize("kind", SIDECARS)
async def test_rds_per_filter_chain_of_a_static_listener(tmp_path, upstreams, kind):
    """The same chains in a bootstrap listener (as Istio's corpus has them): their route
    configs come over ADS; the server is ready once both have arrived."""
    ads = ScriptedAds()
    server = grpc.aio.server()
    from envoy.service.discovery.v3 import ads_pb2_grpc

    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports = upstreams.ports
    clusters = {"a": ports["alpha"], "b": ports["beta"], "c": ports["gamma"], "d": ports["delta"]}
    lport, admin = free_port(), free_port()
    boot = bootstrap(admin, xds_port, False, clusters)
    del boot["dynamic_resources"]["lds_config"]
    boot["static_resources"]["listeners"] = [listener("multi", lport)]
    ra = _msg(RDS, _route_config("ra", "a"))
    ads.push(RDS, "r1", [ra, _msg(RDS, _route_config("rb", "b"))])
    proxy = None
    run = asyncio.to_thread
    try:
        proxy = await run(launch, kind, boot, tmp_path)
        assert await run(eventually, lambda: ready(admin), 200, 30) == 200
        want = {"127.0.0.2": "alpha", "127.0.0.3": "beta", "127.0.0.4": "alpha",
                "127.0.0.5": "gamma"}  # fmt: skip
        assert await run(routing_all, lport) == want
        ads.push(RDS, "r2", [ra, _msg(RDS, _route_config("rb", "d"))])
        await ads.acked(RDS)
        got = await run(eventually, lambda: routing_all(lport), {**want, "127.0.0.3": "delta"})
        assert got == {**want, "127.0.0.3": "delta"}
        s = await run(stats, admin)
        assert s["http.chain_b.rds.rb.config_reload"] == 2
        assert s["http.chain_a.rds.ra.config_reload"] == 1
    finally:
        if proxy is not None:
            await run(proxy.stop)
        await server.stop(None)
