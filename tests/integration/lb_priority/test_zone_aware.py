"""Zone-aware routing side by side with Envoy 1.40: the same static bootstrap (node locality
zone a, cluster_manager.local_cluster_name `local`, upstream cluster `up` of hosts in
zones a, b and c) given to both proxies, N requests through each; compared: the share
each zone gets (against the share Envoy's algorithm gives, within 4.5 standard deviations
of a binomial share over N, and against Envoy's own), exact round robin splits where no
zone routing happens, and the lb_zone_* stats.

The local cluster's hosts never take traffic: they say where this proxy's peers are. Envoy
counts the per-update stats (lb_recalculate_zone_structures, lb_zone_cluster_too_small,
lb_local_cluster_not_ok when the local cluster lacks this zone) once per thread, the main
one and each worker; sofamesh once per worker process: these are compared as zero or not."""

from __future__ import annotations

import http.client
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.health.helpers import wait_flags
from tests.support.envoy import ProxyProcess, admin_get

UP = {"a": ("a0", "a1"), "b": ("b0", "b1"), "c": ("c0", "c1")}
N_SHARES = 1000  # where zone routing splits at random
N_RR = 600  # where round robin gives an exact split (over 6 or 5 hosts)
PER_UPDATE = ("lb_recalculate_zone_structures", "lb_zone_cluster_too_small")
ZONE_STATS = (
    "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures",
    "lb_zone_cluster_too_small",
    "lb_zone_no_capacity_left",
    "lb_zone_routing_all_directly",
    "lb_zone_routing_cross_zone",
    "lb_zone_routing_sampled",
)
HC = {
    "timeout": "0.5s",
    "interval": "0.1s",
    "no_traffic_interval": "0.1s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    "http_health_check": {"path": "/health"},
}


def _ep(port: int) -> dict:
    return {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }


def make_bootstrap(
    up: dict[str, list[int]],
    local: dict[str, list[int]],
    zone_cfg: dict | None = None,
    checked: bool = False,
    lb_policy: str = "ROUND_ROBIN",
) -> dict:
    """`up` and `local`: zone -> endpoint ports. With `checked`, both clusters are health
    checked on their endpoints (update_merge_window 0: the balancer sees a change at once)."""
    aport, lport = free_port(), free_port()
    common: dict = {"update_merge_window": "0s"} if checked else {}
    if zone_cfg is not None:
        common["zone_aware_lb_config"] = zone_cfg

    def cluster(name: str, eps: dict[str, list[int]], lb: dict) -> dict:
        c = {
            "name": name,
            "lb_policy": lb_policy,
            "type": "STATIC",
            "connect_timeout": "1s",
            "common_lb_config": lb,
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {"locality": {"zone": z}, "lb_endpoints": [_ep(p) for p in ports]}
                    for z, ports in eps.items()
                ],
            },
        }
        if checked:
            c["health_checks"] = [HC]
        return c

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "ing",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "node": {"id": "n", "cluster": "c", "locality": {"zone": "a"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": aport}}},
        "cluster_manager": {"local_cluster_name": "local"},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": lport}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                cluster("up", up, common),
                cluster("local", local, {"update_merge_window": "0s"} if checked else {}),
            ],
        },
    }


def send(lport: int, zone_of: dict[int, str], n: int) -> dict[str, int]:
    """n requests on one connection: host name (the upstream answers its port) -> count."""
    got: dict[str, int] = {}
    c = http.client.HTTPConnection("127.0.0.1", lport, timeout=10)
    try:
        for _ in range(n):
            c.request("GET", "/x")
            r = c.getresponse()
            body = r.read().decode()
            k = zone_of[int(body)] if r.status == 200 else str(r.status)
            got[k] = got.get(k, 0) + 1
    finally:
        c.close()
    return got


def zone_stats(aport: int, panic: bool = False) -> dict[str, int]:
    """cluster.up's zone stats (and lb_healthy_panic)."""
    _, text = admin_get(aport, "/stats")
    out = {}
    names = ["cluster.up.lb_local_cluster_not_ok", "cluster.up.lb_recalculate_zone_structures"]
    if panic:
        names.append("cluster.up.lb_healthy_panic")
    for line in text.splitlines():
        name, _, v = line.partition(": ")
        if name.startswith("cluster.up.lb_zone_") or name in names:
            out[name.removeprefix("cluster.up.")] = int(v)
    return out


def by_zone(split: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in split.items():
        out[k[0]] = out.get(k[0], 0) + v
    return out


def tol(p: float, n: int, samples: int = 1) -> float:
    """4.5 standard deviations of a share p over n requests (of a difference between
    `samples` such shares): a false failure about once in 150,000 comparisons."""
    return 4.5 * math.sqrt(samples * p * (1 - p) / n) + 1e-9


def _envoy(b, tmp):
    return ProxyProcess.envoy(envoy_binary(), b, tmp / "envoy")


def _sofamesh(b, tmp):
    return ProxyProcess.sofamesh(sofamesh_command(), b, tmp / "sm")


def _sofamesh_2(b, tmp):
    return ProxyProcess.sofamesh(sofamesh_command(), b, tmp / "sm2", concurrency=2)


PROXIES = {"envoy": _envoy, "sofamesh": _sofamesh}
STARTERS = {**PROXIES, "sofamesh-2-workers": _sofamesh_2}


class Upstream:
    """Answers its port, and /health with `status`, in one write each (headers and body
    apart would wait out a delayed ACK per request)."""

    def __init__(self) -> None:
        self.status = 200
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                code = up.status if self.path.startswith("/health") else 200
                body = str(up.port).encode()
                head = f"HTTP/1.1 {code} X\r\ncontent-length: {len(body)}\r\n\r\n"
                self.wfile.write(head.encode() + body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Upstreams:
    """An Upstream per upstream host and per local-cluster host."""

    def __init__(self, local: dict[str, int]) -> None:
        self.up = {n: Upstream() for hs in UP.values() for n in hs}
        self.local = {f"l{z}{i}": Upstream() for z, k in local.items() for i in range(k)}
        self.zone_of = {u.port: n for n, u in self.up.items()}

    def ports(self, hosts: dict[str, tuple[str, ...]], table: dict) -> dict[str, list[int]]:
        return {z: [table[n].port for n in names] for z, names in hosts.items()}

    def local_ports(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for n, u in self.local.items():
            out.setdefault(n[1], []).append(u.port)
        return out

    def close(self) -> None:
        for u in (*self.up.values(), *self.local.values()):
            u.close()


# (local cluster hosts per zone, zone_aware_lb_config, upstream hosts (zone -> names) or None
#  for UP, the share of each zone Envoy's algorithm gives, the zone stats that count per
#  request, the per-update stats that are counted)
CASES = {
    # local a holds 1/3 of the peers and 1/3 of the upstream: every request stays in a
    "all_directly": ({"a": 1, "b": 1, "c": 1}, None, None, {"a": 1.0}, "all_directly", ()),
    # a holds half the peers but a third of the upstream: 3333/5000 of requests stay, the
    # rest goes to b and c by their excess upstream share (33.33 - 25 % each)
    "sampled": (
        {"a": 2, "b": 1, "c": 1},
        {},
        None,
        {"a": 0.6666, "b": 0.1667, "c": 0.1667},
        "sampled",
        (),
    ),
    # the zone is chosen before the host, whatever the policy
    "sampled_least_request": (
        {"a": 2, "b": 1, "c": 1},
        {},
        None,
        {"a": 0.6666, "b": 0.1667, "c": 0.1667},
        "sampled",
        (),
    ),
    "sampled_random": (
        {"a": 2, "b": 1, "c": 1},
        {},
        None,
        {"a": 0.6666, "b": 0.1667, "c": 0.1667},
        "sampled",
        (),
    ),
    # the local cluster has zones a and b only (Envoy 1.40 routes anyway: no zone count
    # check, no lb_zone_number_differs): all cross-zone traffic goes to c
    "zone_count_differs": (
        {"a": 1, "b": 1},
        {},
        None,
        {"a": 0.6666, "c": 0.3334},
        "sampled",
        (),
    ),
    # five healthy upstream hosts, under Envoy's default min_cluster_size of 6
    "cluster_too_small": (
        {"a": 1, "b": 1, "c": 1},
        None,
        {"a": ("a0", "a1"), "b": ("b0", "b1"), "c": ("c0",)},
        None,
        "",
        ("lb_zone_cluster_too_small",),
    ),
    # min_cluster_size raised over the cluster's six hosts
    "min_cluster_size": (
        {"a": 1, "b": 1, "c": 1},
        {"min_cluster_size": 7},
        None,
        None,
        "",
        ("lb_zone_cluster_too_small",),
    ),
    # the local cluster has no host in this proxy's zone a
    "local_cluster_not_ok": ({"b": 1, "c": 1}, {}, None, None, "", ("lb_local_cluster_not_ok",)),
    # one local zone: nothing to balance against, nothing counted
    "one_local_zone": ({"a": 3}, {}, None, None, "", ()),
    "routing_enabled_0": (
        {"a": 1, "b": 1, "c": 1},
        {"routing_enabled": {"value": 0}},
        None,
        None,
        "",
        (),
    ),
    # half the requests are considered: a gets 1/2 + 1/2 x 1/3
    "routing_enabled_50": (
        {"a": 1, "b": 1, "c": 1},
        {"routing_enabled": {"value": 50}},
        None,
        {"a": 0.6667, "b": 0.1667, "c": 0.1667},
        "all_directly",
        (),
    ),
}


POLICY = {"sampled_least_request": "LEAST_REQUEST", "sampled_random": "RANDOM"}


def _n(name: str) -> int:
    return N_RR if CASES[name][3] is None else N_SHARES


def run_case(name: str, kind: str, tmp_path) -> tuple[dict[str, int], dict[str, int]]:
    local, cfg, up, _, _, _ = CASES[name]
    ups = Upstreams(local)
    try:
        hosts = up if up is not None else UP
        policy = POLICY.get(name, "ROUND_ROBIN")
        b = make_bootstrap(ups.ports(hosts, ups.up), ups.local_ports(), cfg, lb_policy=policy)
        with PROXIES[kind](b, tmp_path / name):
            aport = b["admin"]["address"]["socket_address"]["port_value"]
            lport = b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            split = send(lport, ups.zone_of, _n(name))
            return split, zone_stats(aport)
    finally:
        ups.close()


def check_case(name: str, split: dict[str, int], stats: dict[str, int]) -> None:
    _, cfg, up, shares, per_request, counted = CASES[name]
    N = _n(name)
    zones = by_zone(split)
    assert sum(split.values()) == N, split
    if shares is None:  # plain round robin over every healthy host: an exact split
        hosts = [n for hs in (up or UP).values() for n in hs]
        assert split == {n: N // len(hosts) for n in hosts}, split
    else:
        assert set(zones) == set(shares), zones
        for z, p in shares.items():
            assert abs(zones[z] / N - p) <= tol(p, N), (z, zones, shares)
        for z, names in (up or UP).items():  # round robin within a zone
            if z in zones and name not in POLICY:
                assert max(split[n] for n in names) - min(split[n] for n in names) <= N // 100
    assert set(stats) == set(ZONE_STATS), stats  # lb_zone_number_differs is gone in 1.40
    assert stats["lb_recalculate_zone_structures"] > 0
    assert stats["lb_zone_no_capacity_left"] == 0
    for s in ("lb_zone_cluster_too_small", "lb_local_cluster_not_ok"):
        assert (stats[s] > 0) == (s in counted), stats
    if per_request == "all_directly":
        frac = 1.0 if cfg is None else cfg["routing_enabled"]["value"] / 100
        if frac == 1.0:
            assert stats["lb_zone_routing_all_directly"] == N, stats
        else:
            assert abs(stats["lb_zone_routing_all_directly"] / N - frac) <= tol(frac, N), stats
        assert stats["lb_zone_routing_sampled"] == stats["lb_zone_routing_cross_zone"] == 0
    elif per_request == "sampled":
        assert stats["lb_zone_routing_all_directly"] == 0
        assert stats["lb_zone_routing_sampled"] + stats["lb_zone_routing_cross_zone"] == N
        # every request stays local when sampled and leaves the zone when not
        assert stats["lb_zone_routing_sampled"] == zones["a"], (stats, zones)
    else:
        for s in ("all_directly", "sampled", "cross_zone"):
            assert stats[f"lb_zone_routing_{s}"] == 0, stats


@pytest.mark.envoy
@pytest.mark.parametrize("name", list(CASES))
def test_zone_aware_as_envoy(name, tmp_path):
    got = {kind: run_case(name, kind, tmp_path) for kind in PROXIES}
    for split, stats in got.values():
        check_case(name, split, stats)  # Envoy first: the expectations hold for Envoy itself
    (e_split, e_stats), (s_split, s_stats) = got["envoy"], got["sofamesh"]
    ez, sz = by_zone(e_split), by_zone(s_split)
    shares, N = CASES[name][3], _n(name)
    for z, p in (shares or {}).items():
        assert abs(ez.get(z, 0) - sz.get(z, 0)) / N <= tol(p, N, 2), (ez, sz)
    for s in ZONE_STATS:
        if s in PER_UPDATE or s == "lb_local_cluster_not_ok":
            assert (e_stats[s] > 0) == (s_stats[s] > 0), (s, e_stats, s_stats)
        elif s == "lb_zone_routing_all_directly" and e_stats[s] in (0, N):
            assert s_stats[s] == e_stats[s], (e_stats, s_stats)


# Health checks change the hosts both clusters have (min_cluster_size 3): (upstream hosts
# down, local hosts down, the share of each zone, what each request counts)
STEPS = [
    ((), (), {"a": 1.0}, "all_directly"),
    # a0 down: a holds 20 % of the upstream and 33 % of the peers: 60 % stay
    (("a0",), (), {"a": 0.6, "b": 0.2, "c": 0.2}, "sampled"),
    # all of a down: nothing stays, b and c share by excess
    (("a0", "a1"), (), {"b": 0.5, "c": 0.5}, "sampled"),
    # the peer in b down: a now holds half the peers; c has no excess left, b takes it all
    ((), ("lb0",), {"a": 0.6666, "b": 0.3334}, "sampled"),
    # two of three peers down: the local cluster is in panic, no zone routing (round robin)
    ((), ("lb0", "lc0"), {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, "not_ok"),
    ((), (), {"a": 1.0}, "all_directly"),
]
N_STEP = 800


def run_steps(
    kind: str, tmp_path, steps: list = STEPS, cfg: dict | None = None, n: int = N_STEP
) -> list[tuple[dict[str, int], dict[str, int], int]]:
    """Per step: the split, the stats counted by its requests (lb_healthy_panic too), and
    how many times the zone state was recomputed since the previous step's requests."""
    ups = Upstreams({"a": 1, "b": 1, "c": 1})
    out = []
    cfg = {"min_cluster_size": 3} if cfg is None else cfg
    try:
        b = make_bootstrap(ups.ports(UP, ups.up), ups.local_ports(), cfg, checked=True)
        with STARTERS[kind](b, tmp_path / f"steps-{kind}"):
            aport = b["admin"]["address"]["socket_address"]["port_value"]
            lport = b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            last = zone_stats(aport)
            for up_down, local_down, _, _ in steps:
                for table, down, cluster in (
                    (ups.up, up_down, "up"),
                    (ups.local, local_down, "local"),
                ):
                    for h, u in table.items():
                        u.status = 503 if h in down else 200
                    for h, u in table.items():
                        want = "/failed_active_hc" if h in down else "healthy"
                        wait_flags(aport, u.port, want, 5.0, cluster)
                time.sleep(0.5)  # the balancer takes the flags a moment after /clusters
                before = zone_stats(aport, panic=True)
                split = send(lport, ups.zone_of, n)
                after = zone_stats(aport, panic=True)
                recalc = "lb_recalculate_zone_structures"
                out.append(
                    (split, {k: after[k] - before[k] for k in after}, before[recalc] - last[recalc])
                )
                last = after
    finally:
        ups.close()
    return out


def check_steps(steps: list[tuple[dict[str, int], dict[str, int], int]]) -> None:
    n = N_STEP
    for i, ((split, delta, recalc), (_, _, shares, counts)) in enumerate(
        zip(steps, STEPS, strict=True)
    ):
        if i > 0:  # every step changes some host's health: the state was recomputed
            assert recalc > 0, (i, recalc)
        assert delta["lb_recalculate_zone_structures"] == 0, delta  # not per request
        zones = by_zone(split)
        assert set(zones) == set(shares), (zones, shares)
        for z, p in shares.items():
            assert abs(zones[z] / n - p) <= tol(p, n), (z, zones, shares)
        assert delta["lb_zone_no_capacity_left"] == 0
        if counts == "all_directly":
            assert delta["lb_zone_routing_all_directly"] == n, delta
        elif counts == "sampled":
            assert delta["lb_zone_routing_sampled"] + delta["lb_zone_routing_cross_zone"] == n
            assert delta["lb_zone_routing_sampled"] == zones.get("a", 0), (delta, zones)
        else:  # every request finds the local cluster in panic
            assert delta["lb_local_cluster_not_ok"] == n, delta
            assert delta["lb_zone_routing_all_directly"] == delta["lb_zone_routing_sampled"] == 0


@pytest.mark.envoy
def test_zone_state_recomputed_on_health_changes(tmp_path):
    """Health checks on both clusters move hosts in and out: the zone state is recomputed
    (lb_recalculate_zone_structures grows) and traffic follows as it does in Envoy."""
    got = {kind: run_steps(kind, tmp_path) for kind in PROXIES}
    for steps in got.values():
        check_steps(steps)
    for i, ((es, _, _), (ss, _, _)) in enumerate(zip(got["envoy"], got["sofamesh"], strict=True)):
        ez, sz = by_zone(es), by_zone(ss)
        for z, p in STEPS[i][2].items():
            assert abs(ez.get(z, 0) - sz.get(z, 0)) / N_STEP <= tol(p, N_STEP, 2), (i, ez, sz)


def test_zone_state_recomputed_on_health_changes_two_workers(tmp_path):
    """--concurrency 2: the main process checks both clusters; each worker recomputes."""
    check_steps(run_steps("sofamesh-2-workers", tmp_path))


# EDS assignments of `up` over ADS (min_cluster_size 3; the static local cluster has one
# peer in each zone): upstream hosts per zone -> the share of each zone, what requests count
EDS_STEPS = [
    ({"a": ("a0", "a1"), "b": ("b0", "b1"), "c": ("c0", "c1")}, {"a": 1.0}, "all_directly"),
    # a1 leaves: a holds 20 % of the upstream, 33 % of the peers: 60 % stay
    (
        {"a": ("a0",), "b": ("b0", "b1"), "c": ("c0", "c1")},
        {"a": 0.6, "b": 0.2, "c": 0.2},
        "sampled",
    ),
    # a2 joins a, c2 joins c: a 2/7 of the upstream -> 8571/10000 stay, the rest to c
    (
        {"a": ("a0", "a2"), "b": ("b0", "b1"), "c": ("c0", "c1", "c2")},
        {"a": 0.8571, "c": 0.1429},
        "sampled",
    ),
    # two hosts: under min_cluster_size, round robin over both
    ({"a": ("a0",), "b": ("b0",)}, {"a": 0.5, "b": 0.5}, "too_small"),
]


async def run_eds(kind: str, tmp_path) -> list[tuple[dict[str, int], dict[str, int]]]:
    import asyncio

    import grpc
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc
    from google.protobuf import json_format

    from tests.integration.pilot.conftest import ads_bootstrap
    from tests.integration.xds.test_sidecar_nack import CDS, LDS, listener
    from tests.support.xds_server import ScriptedAds

    eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    hosts = {f"{z}{i}": Upstream() for z in "abc" for i in range(3)}
    zone_of = {u.port: n for n, u in hosts.items()}
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = free_port(), free_port()

    def assignment(spec: dict[str, tuple[str, ...]]) -> endpoint_pb2.ClusterLoadAssignment:
        eps = [
            {"locality": {"zone": z}, "lb_endpoints": [_ep(hosts[n].port) for n in names]}
            for z, names in spec.items()
        ]
        return json_format.ParseDict(
            {"cluster_name": "up", "endpoints": eps}, endpoint_pb2.ClusterLoadAssignment()
        )

    up = json_format.ParseDict(
        {
            "name": "up",
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            "common_lb_config": {"zone_aware_lb_config": {"min_cluster_size": 3}},
        },
        cluster_pb2.Cluster(),
    )
    route = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
            }
        ],
    }
    ads.push(CDS, "c1", [up])
    ads.push(eds, "e0", [assignment(EDS_STEPS[0][0])])
    ads.push(LDS, "l1", [listener(lport, route_config=route)])
    boot = ads_bootstrap(xds_port, admin, delta=False)
    boot["node"]["locality"] = {"zone": "a"}
    boot["cluster_manager"] = {"local_cluster_name": "local"}
    peers = {z: [20000 + i] for i, z in enumerate("abc")}  # never dialled
    boot["static_resources"]["clusters"].append(
        {
            "name": "local",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "local",
                "endpoints": [
                    {
                        "locality": {"zone": z},
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.2", "port_value": p}
                                    }
                                }
                            }
                            for p in ports
                        ],
                    }
                    for z, ports in peers.items()
                ],
            },
        }
    )
    if kind == "envoy":
        proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path / f"eds-{kind}")
    else:
        proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / f"eds-{kind}")
    out = []
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        for i, (spec, _, _) in enumerate(EDS_STEPS):
            ads.push(eds, f"e{i + 1}", [assignment(spec)])
            await ads.acked(eds)
            await asyncio.sleep(0.5)  # Envoy's workers take the new host set
            before = await asyncio.to_thread(zone_stats, admin)
            split = await asyncio.to_thread(send, lport, zone_of, N_SHARES)
            after = await asyncio.to_thread(zone_stats, admin)
            out.append((split, {k: after[k] - before[k] for k in after}))
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)
        for u in hosts.values():
            u.close()
    return out


def check_eds(steps: list[tuple[dict[str, int], dict[str, int]]]) -> None:
    n = N_SHARES
    for (split, delta), (spec, shares, counts) in zip(steps, EDS_STEPS, strict=True):
        zones = by_zone(split)
        assert set(zones) == set(shares), (spec, zones)
        for z, p in shares.items():
            assert abs(zones[z] / n - p) <= tol(p, n), (spec, z, zones)
        if counts == "all_directly":
            assert delta["lb_zone_routing_all_directly"] == n, delta
        elif counts == "sampled":
            assert delta["lb_zone_routing_sampled"] == zones["a"], (delta, zones)
            assert delta["lb_zone_routing_cross_zone"] == n - zones["a"], (delta, zones)
        else:
            assert split == {"a0": n // 2, "b0": n // 2}, split
            assert sum(v for k, v in delta.items() if k.startswith("lb_zone_routing")) == 0


@pytest.mark.envoy
async def test_zone_state_recomputed_on_eds_updates(tmp_path):
    """EDS replaces the upstream's hosts: the zone state follows each assignment as
    Envoy's does."""
    got = {kind: await run_eds(kind, tmp_path) for kind in PROXIES}
    for steps in got.values():
        check_eds(steps)
    for i, ((es, _), (ss, _)) in enumerate(zip(got["envoy"], got["sofamesh"], strict=True)):
        ez, sz = by_zone(es), by_zone(ss)
        for z, p in EDS_STEPS[i][1].items():
            assert abs(ez.get(z, 0) - sz.get(z, 0)) / N_SHARES <= tol(p, N_SHARES, 2), (ez, sz)


# fail_traffic_on_panic: no host for a request that finds the upstream's level or the local
# cluster in panic (min_cluster_size 3); by_zone() files a 503 under "5"
FAIL_STEPS = [
    ((), ("lb0", "lc0"), {"5": 1.0}, "lb_local_cluster_not_ok"),
    (("a0", "a1", "b0", "b1"), (), {"5": 1.0}, "lb_healthy_panic"),
    ((), (), {"a": 1.0}, "lb_zone_routing_all_directly"),
]


@pytest.mark.envoy
def test_fail_traffic_on_panic(tmp_path):
    n = 200
    cfg = {"min_cluster_size": 3, "fail_traffic_on_panic": True}
    for kind in PROXIES:
        steps = run_steps(kind, tmp_path / kind, FAIL_STEPS, cfg, n)
        for (split, delta, _), (_, _, shares, counted) in zip(steps, FAIL_STEPS, strict=True):
            assert by_zone(split) == {z: int(p * n) for z, p in shares.items()}, (kind, split)
            assert delta[counted] == n, (kind, delta)
