"""Pilot at scale: 10,000 services / 50,000 instances, a fresh Envoy, 100 ADS clients.

    .venv/bin/python benchmarks/pilot_scale.py [--services 10000 --per-service 5 --clients 100]

Measures, against a real `sofamesh pilot` process (embedded store, default 100 ms debounce):
  * registration throughput through the REST API (all 50,000 instances, 32 concurrent clients);
  * the pilot's RSS with the full model, and with 100 ADS streams connected;
  * time for a fresh Envoy 1.40 (SotW and Delta) to receive and warm the full config;
  * latency from a registry change (REST PUT sent) to each of 100 SotW ADS clients' ACK of the
    push, for an instance change (EDS) and for a new service (CDS + RDS), p50/p99.
The 100 clients are plain Python grpc.aio streams in one separate process, subscribed like
Envoy (LDS/CDS wildcard, RDS "<outbound port>", EDS for every cluster); latencies include
the debounce. Results print as a table and as JSON (--json FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SVC_PORT = 80


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get_json(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def metric(api: str, name: str) -> float:
    with urllib.request.urlopen(api + "/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return -1


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --- the 100 ADS clients (run in a child process) ------------------------------------------


async def client_worker(xds_port: int, n: int, clusters: list[str], route: str) -> None:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    opts = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    ready = asyncio.Event()
    pending = {"n": n}
    out = sys.stdout
    live = {"on": False}

    async def one(i: int) -> None:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}", options=opts)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        call = stub.StreamAggregatedResources()
        names = {CDS: [], LDS: [], RDS: [route], EDS: clusters}
        first = discovery_pb2.DiscoveryRequest(type_url=CDS)
        first.node.id = f"sidecar~127.0.0.{i % 250 + 1}~bench-{i}.ns~ns.svc.cluster.local"
        await call.write(first)
        for t in (EDS, LDS, RDS):
            await call.write(discovery_pb2.DiscoveryRequest(type_url=t, resource_names=names[t]))
        seen: set[str] = set()
        async for resp in call:
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                    resource_names=names[resp.type_url],
                )
            )
            t_ack = time.monotonic()
            if live["on"]:
                out.write(
                    f"ACK {i} {resp.type_url.rsplit('.', 1)[-1]} {t_ack:.6f} {len(resp.resources)}\n"
                )
                out.flush()
            elif len(seen) < 4:
                seen.add(resp.type_url)
                if len(seen) == 4:
                    pending["n"] -= 1
                    if pending["n"] == 0:
                        ready.set()

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await ready.wait()
    live["on"] = True
    out.write("READY\n")
    out.flush()
    await asyncio.gather(*tasks)


# --- the driver ------------------------------------------------------------------------------


class Pilot:
    def __init__(self, workdir: Path):
        self.xds = free_port()
        self.api_port = free_port()
        self.outbound = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log = open(workdir / "pilot.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sofamesh",
                "pilot",
                "--xds-address",
                f"127.0.0.1:{self.xds}",
                "--api-address",
                f"127.0.0.1:{self.api_port}",
                "--outbound-port",
                str(self.outbound),
                "--listener-address",
                "127.0.0.1",
                "--data-dir",
                str(workdir / "data"),
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                get_json(self.api + "/healthz", 1)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("pilot did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


async def populate(api: str, services: int, per: int, concurrency: int = 32) -> float:
    import aiohttp

    jobs = [
        (f"svc-{s}", f"i{k}", 20000 + (s * per + k) % 40000)
        for s in range(services)
        for k in range(per)
    ]
    t0 = time.perf_counter()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        it = iter(jobs)

        async def worker() -> None:
            for svc, iid, port in it:
                body = {
                    "address": f"10.{port // 256 % 256}.{port % 256}.{len(iid)}",
                    "port": port,
                    "service_port": SVC_PORT,
                    "labels": {"app": svc},
                }
                async with http.put(f"{api}/v1/services/{svc}/instances/{iid}", json=body) as r:
                    if r.status not in (200, 201):
                        raise RuntimeError(f"PUT {svc}/{iid}: {r.status} {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def fetch_all(pilot: Pilot, n_services: int) -> dict[str, list]:
    """Every resource the pilot serves a sidecar, over one SotW stream (decoded)."""
    import grpc
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    msgs = {
        CDS: cluster_pb2.Cluster,
        EDS: endpoint_pb2.ClusterLoadAssignment,
        LDS: listener_pb2.Listener,
        RDS: route_pb2.RouteConfiguration,
    }
    names = {
        CDS: [],
        LDS: [],
        RDS: [str(pilot.outbound)],
        EDS: [f"outbound|{SVC_PORT}||svc-{s}" for s in range(n_services)],
    }
    reqs = []
    for t in (CDS, EDS, LDS, RDS):
        r = discovery_pb2.DiscoveryRequest(type_url=t, resource_names=names[t])
        r.node.id = "sidecar~127.0.0.1~dump.ns~ns.svc.cluster.local"
        reqs.append(r)
    opts = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    out: dict[str, list] = {}
    with grpc.insecure_channel(f"127.0.0.1:{pilot.xds}", options=opts) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(iter(reqs))
        for resp in call:
            out.setdefault(resp.type_url, []).extend(
                msgs[resp.type_url].FromString(a.value) for a in resp.resources
            )
            if len(out) == 4:
                call.cancel()
                break
    return out


def static_bootstrap(res: dict[str, list], admin: int) -> dict:
    """The same config as a static file: clusters STATIC with their endpoints inline, the
    listener with its route config inline (Envoy's own baseline, no xDS)."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from google.protobuf import json_format

    import sofamesh.pilot.generate  # noqa: F401 - registers the Any types json_format resolves

    cla = {c.cluster_name: c for c in res[EDS]}
    routes = {r.name: r for r in res[RDS]}
    clusters = []
    for c in res[CDS]:
        c.type = c.STATIC
        c.ClearField("eds_cluster_config")
        c.load_assignment.CopyFrom(cla[c.name])
        clusters.append(json_format.MessageToDict(c, preserving_proto_field_name=True))
    listeners = []
    for lst in res[LDS]:
        f = lst.filter_chains[0].filters[0]
        hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
        hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
        hcm.ClearField("rds")
        f.typed_config.Pack(hcm)
        listeners.append(json_format.MessageToDict(lst, preserving_proto_field_name=True))
    return {
        "node": {"id": "sidecar~127.0.0.1~static.ns~ns.svc.cluster.local", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"clusters": clusters, "listeners": listeners},
    }


def envoy_full_config(
    pilot: Pilot, n_clusters: int, mode: str, workdir: Path, static: dict | None = None
) -> float:
    """Seconds from Envoy's start until every cluster is active (none warming) and the
    outbound listener is active with its routes (mode: sotw, delta, or static)."""
    from tests.integration.pilot.conftest import ads_bootstrap

    envoy = ROOT / ".venv-envoy" / "bin" / "envoy"
    admin = free_port()
    cfg = workdir / f"envoy-{mode}.json"
    if mode == "static":
        assert static is not None
        static["admin"]["address"]["socket_address"]["port_value"] = admin
        boot = static
        extra = 0
    else:
        boot = ads_bootstrap(pilot.xds, admin, mode == "delta")
        extra = 1  # the static xds-grpc cluster
    cfg.write_text(json.dumps(boot))
    log = open(workdir / f"envoy-{mode}.log", "wb")  # noqa: SIM115 - closed in finally
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            str(envoy),
            "-c",
            str(cfg),
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--disable-hot-restart",
            "--base-id",
            str(900 + ("sotw", "delta", "static").index(mode)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    want = {
        "cluster_manager.active_clusters": n_clusters + extra,
        "cluster_manager.warming_clusters": 0,
        "listener_manager.total_listeners_active": 1,
    }
    try:
        while True:
            if time.monotonic() - t0 > 300 or proc.poll() is not None:
                raise RuntimeError(f"envoy ({mode}) did not get the full config")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{admin}/stats?filter=^(cluster_manager|listener_manager|http\\.outbound)",
                    timeout=5,
                ) as r:
                    stats = dict(
                        line.split(": ", 1)
                        for line in r.read().decode().splitlines()
                        if ": " in line
                    )
            except OSError:
                time.sleep(0.05)
                continue
            rds_ok = mode == "static" or any(
                k.endswith(f".rds.{pilot.outbound}.update_success") and int(v) > 0
                for k, v in stats.items()
            )
            if rds_ok and all(int(stats.get(k, -1)) == v for k, v in want.items()):
                return time.monotonic() - t0
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


class Clients:
    def __init__(self, pilot: Pilot, n: int, services: int):
        self.n = n
        self.events: list[tuple[int, str, float]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client-worker",
                "--xds-port",
                str(pilot.xds),
                "--clients",
                str(n),
                "--services",
                str(services),
                "--route",
                str(pilot.outbound),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("ACK "):
                _, i, t, ts, _n = line.split()
                with self.cond:
                    self.events.append((int(i), t, float(ts)))
                    self.cond.notify_all()

    def wait_acks(self, type_name: str, since: float, timeout: float = 120) -> list[float]:
        """Per client, the first ACK of `type_name` after `since`: latencies in seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                first: dict[int, float] = {}
                for i, t, ts in self.events:
                    if t == type_name and ts >= since and i not in first:
                        first[i] = ts - since
                if len(first) == self.n:
                    return list(first.values())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"only {len(first)}/{self.n} clients ACKed {type_name}")
                self.cond.wait(left)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def put(api: str, svc: str, iid: str, body: dict) -> None:
    req = urllib.request.Request(
        f"{api}/v1/services/{svc}/instances/{iid}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status in (200, 201)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--per-service", type=int, default=5)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--new-services", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--client-worker", action="store_true")
    ap.add_argument("--xds-port", type=int)
    ap.add_argument("--route", default="15001")
    args = ap.parse_args()
    if args.client_worker:
        import uvloop

        clusters = [f"outbound|{SVC_PORT}||svc-{s}" for s in range(args.services)]
        uvloop.run(client_worker(args.xds_port, args.clients, clusters, args.route))
        return 0

    work = Path(tempfile.mkdtemp(prefix="pilot-scale-"))
    res: dict = {
        "services": args.services,
        "instances": args.services * args.per_service,
        "clients": args.clients,
    }
    pilot = Pilot(work)
    clients = None
    try:
        res["rss_empty_mb"] = round(rss_mb(pilot.proc.pid), 1)
        took = asyncio.run(populate(pilot.api, args.services, args.per_service))
        res["register_seconds"] = round(took, 2)
        res["register_per_second"] = round(res["instances"] / took)
        while metric(pilot.api, "pilot_instances") != res["instances"]:
            time.sleep(0.2)
        time.sleep(0.5)
        res["rss_loaded_mb"] = round(rss_mb(pilot.proc.pid), 1)
        res["rebuild_ms_last"] = metric(pilot.api, "pilot_last_rebuild_ms")
        static = static_bootstrap(fetch_all(pilot, args.services), 0)
        for mode in ("static", "sotw", "delta"):
            key = "envoy_full_config_seconds_" + mode
            res[key] = round(envoy_full_config(pilot, args.services, mode, work, static), 2)
            print(f"{key}: {res[key]}", flush=True)

        clients = Clients(pilot, args.clients, args.services)
        t0 = time.monotonic()
        if not clients.ready.wait(600):
            raise RuntimeError("clients never got their initial config")
        res["clients_initial_config_seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(1.0)
        res["rss_with_clients_mb"] = round(rss_mb(pilot.proc.pid), 1)

        rng = random.Random(7)
        eds_lat: list[float] = []
        worst: list[float] = []
        for k in range(args.changes):
            svc = f"svc-{rng.randrange(args.services)}"
            t0 = time.monotonic()
            put(
                pilot.api,
                svc,
                f"extra-{k}",
                {"address": "10.200.0.1", "port": 30000 + k, "service_port": SVC_PORT},
            )
            lat = clients.wait_acks("ClusterLoadAssignment", t0)
            eds_lat += lat
            worst.append(max(lat))
            time.sleep(0.3)
        res["eds_change_to_ack_p50_ms"] = round(pct(eds_lat, 50) * 1000, 1)
        res["eds_change_to_ack_p99_ms"] = round(pct(eds_lat, 99) * 1000, 1)
        res["eds_change_to_last_ack_max_ms"] = round(max(worst) * 1000, 1)
        new_lat: list[float] = []
        for k in range(args.new_services):
            t0 = time.monotonic()
            put(
                pilot.api,
                f"fresh-{k}",
                "i0",
                {"address": "10.201.0.1", "port": 31000 + k, "service_port": SVC_PORT},
            )
            new_lat += clients.wait_acks("Cluster", t0)
            time.sleep(0.5)
        res["new_service_to_cds_ack_p50_ms"] = round(pct(new_lat, 50) * 1000, 1)
        res["new_service_to_cds_ack_p99_ms"] = round(pct(new_lat, 99) * 1000, 1)
        res["rss_end_mb"] = round(rss_mb(pilot.proc.pid), 1)
    finally:
        if clients is not None:
            clients.stop()
        pilot.stop()
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
