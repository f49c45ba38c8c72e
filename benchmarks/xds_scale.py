"""xDS at scale, Envoy 1.40 and the sofamesh sidecar side by side, fed by the pilot's own
ADS server (`pilot.server.AdsServer` over `pilot.generate.Generator`, in this process: no
REST, no store, no debounce) over Delta ADS.

    .venv/bin/python benchmarks/xds_scale.py                      # 1k, 10k, 50k; both proxies
    .venv/bin/python benchmarks/xds_scale.py --services 1000 --proxies sofamesh --changes 5
    .venv/bin/python benchmarks/xds_scale.py --services 10000 --clients 100 --proxies none

Per N services (one HTTP port each, 5 instances on 127.0.0.1-5 at one local upstream; one
EDS cluster and one virtual host per service, as the pilot generates them: by default a scope
and a route config per service (scoped RDS), with --one-route-config one route config of all
virtual hosts, the shape of the Envoy anchor figures in issue 8):
  * ready: proxy started -> `/ready` 200, every cluster active (none warming), the route
    config(s) ACKed, and a request for the last service routed to the upstream (200);
  * RSS: VmRSS summed over every process of the proxy, once ready;
  * at --changes-at (10k): an endpoint change of one service (push -> ACK by the proxy), and
    a new service (push -> the proxy has ACKed everything the change sent and routes to it);
    N repetitions each, p50 / p99 / max;
  * --clients K: K Delta ADS clients (grpc.aio streams in one child process; they parse every
    response, ACK it and subscribe to EDS / RDS names as Envoy does), then a new service:
    push -> each client's ACK of the last resource the change brought, p50 / p99.
The proxies run one at a time, each pinned to core 0 (`--concurrency 1`), the ADS server and
the upstream (this process) on core 1 (with --clients, this process, the pilot, on core 0 and
the clients on core 1). --rounds R runs both proxies R times, interleaved
(Envoy, sofamesh, Envoy, ...), and reports each round's ratios and their medians. Results as
a table and --json FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lib import proc
from tests.conftest import sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap

ENVOY = str(ROOT / ".venv-envoy" / "bin" / "envoy")
T = "type.googleapis.com/envoy."
CDS, EDS = T + "config.cluster.v3.Cluster", T + "config.endpoint.v3.ClusterLoadAssignment"
LDS, RDS = T + "config.listener.v3.Listener", T + "config.route.v3.RouteConfiguration"
SRDS = T + "config.route.v3.ScopedRouteConfiguration"


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def admin(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stat_values(port: int, names: list[str]) -> dict[str, int]:
    filt = "|".join(f"^{n.replace('.', '[.]')}$" for n in names)
    _, body = admin(port, "/stats?filter=" + urllib.request.quote(filt))
    out = {}
    for line in body.decode().splitlines():
        k, _, v = line.partition(": ")
        if k in names:
            out[k] = int(v)
    return out


class Upstream:
    """One HTTP server on 0.0.0.0:port answering 200 to anything (every endpoint of every
    service is 127.0.0.<1..5>:port, so each host reaches it)."""

    def __init__(self) -> None:
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = b"ok"
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


class Model:
    """N services through the pilot's generator; `add`/`move` make one change each."""

    def __init__(self, n: int, listen_port: int, upstream_port: int, scoped: bool) -> None:
        from sofamesh.pilot.generate import Generator

        self.up = upstream_port
        self.gen = Generator(
            outbound_port=listen_port, listener_address="127.0.0.1", scoped_routes=scoped
        )
        self.services: dict = {}
        self.instances: dict = {}
        self.n = 0
        for _ in range(n):
            self._service(self.n)
            self.n += 1
        self.gen.update(self.services, self.instances)

    def _service(self, i: int, shift: int = 0) -> str:
        from sofamesh.pilot.model import Instance, Port, Service

        name = f"svc{i:05d}"
        self.services[name] = Service(name=name, ports=(Port(80, "http"),))
        self.instances[name] = [
            Instance(name, f"{name}-{k}", f"127.0.0.{k + 1 + shift}", self.up) for k in range(5)
        ]
        return name

    def add(self):
        name = self._service(self.n)
        self.n += 1
        return name, self.gen.update(self.services, self.instances)

    def move(self, i: int, shift: int):
        """Endpoints of service i move (127.0.0.1-5 <-> 127.0.0.2-6)."""
        name = self._service(i, shift)
        return name, self.gen.update(self.services, self.instances)


class Feed:
    """The pilot's ADS server on a free port, with ACK times per (connection, type)."""

    def __init__(self, model: Model) -> None:
        from sofamesh.pilot.server import AdsServer

        self.model = model
        self.ads = AdsServer(model.gen)
        self.acks: list[tuple[float, str, str, str]] = []  # (t, conn id, type, nonce)
        self.ads.ack_listeners.append(
            lambda conn, t, nonce: self.acks.append((time.monotonic(), conn.id, t, nonce))
        )
        self.port = 0

    async def start(self) -> None:
        self.port = await self.ads.start("127.0.0.1:0")

    def settled(self, since: int) -> bool:
        """Every stream has ACKed everything sent to it (nothing owed, no NACK)."""
        for c in self.ads.connections.values():
            for w in c.watches.values():
                if w.subscribed and (
                    w.pending or w.removed or w.must_reply or w.acked_nonce != w.nonce
                ):
                    if w.nack is not None and w.nack["nonce"] == w.nonce:
                        raise RuntimeError(f"NACK: {w.nack['error'][:500]}")
                    return False
        return len(self.acks) > since or since < 0


async def run_proxy(kind: str, n: int, args, up: Upstream, work: Path) -> dict:
    lport = proc.free_port()
    aport = proc.free_port()
    t0 = time.monotonic()
    model = Model(n, lport, up.port, not args.one_route_config)
    gen_s = time.monotonic() - t0
    feed = Feed(model)
    await feed.start()
    boot = ads_bootstrap(feed.port, aport, delta=True)
    d = work / f"{kind}-{n}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "bootstrap.json").write_text(json.dumps(boot))
    if kind == "envoy":
        argv = [
            ENVOY,
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--disable-hot-restart",
            "--base-id",
            str(os.getpid() % 1000 + n % 997),
        ]
    else:
        argv = [
            *args.wrap.split(),
            *sofamesh_command(),
            "proxy",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ]
    argv += ["-c", str(d / "bootstrap.json")]
    p = proc.Proc(kind, argv, d / "proxy.log", core=0)
    last = f"svc{n - 1:05d}"
    out: dict = {
        "proxy": kind,
        "services": n,
        "routes": "one route config" if args.one_route_config else "scoped (per service)",
        "generate_s": round(gen_s, 2),
    }
    t_start = time.monotonic()
    p.start()
    try:
        while True:
            if p.p.poll() is not None:
                raise RuntimeError(f"{kind} exited: {p.tail()}")
            if time.monotonic() - t_start > args.timeout:
                raise RuntimeError(f"{kind} not ready after {args.timeout} s: {p.tail()}")
            try:
                st, _ = await asyncio.to_thread(admin, aport, "/ready", 2.0)
            except OSError:
                st = 0
            if st == 200 and feed.settled(-1):
                s, _ = await asyncio.to_thread(proc.http_get, lport, "/", last, 5.0)
                if s == 200:
                    break
            await asyncio.sleep(0.02)
        out["ready_s"] = round(time.monotonic() - t_start, 2)
        await asyncio.sleep(0.5)
        pids = proc.process_tree(p.pid)
        out["rss_mb"] = round(rss_mb(pids), 1)
        sv = await asyncio.to_thread(
            stat_values,
            aport,
            [
                "cluster_manager.active_clusters",
                "cluster_manager.warming_clusters",
                f"cluster.outbound|80||{last}.upstream_rq_total",
                f"cluster.outbound|80||{last}.membership_total",
            ],
        )
        out["stats"] = sv
        if sv.get("cluster_manager.active_clusters", 0) < n:
            raise RuntimeError(f"{kind}: only {sv} clusters active")
        t_prom = time.monotonic()
        _, prom = await asyncio.to_thread(admin, aport, "/stats/prometheus", 300.0)
        out["prometheus_s"] = round(time.monotonic() - t_prom, 2)
        key = f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="outbound|80||{last}"}}'
        out["prometheus_has_cluster_stat"] = key.encode() in prom
        if n >= args.changes_at and args.changes:
            # this process stands in for the pilot and holds the whole model: its own full
            # collections (100+ ms at 10k) must not count against the proxy's change
            gc.collect()
            gc.freeze()
            try:
                out.update(await changes(feed, model, args.changes, lport))
            finally:
                gc.unfreeze()
    finally:
        p.stop()
        await feed.ads.stop(0)
    return out


async def wait_settled(feed: Feed, since: int, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while not feed.settled(since):
        if time.monotonic() > deadline:
            st = [
                (
                    c.id,
                    {
                        t.rsplit(".", 1)[-1]: (
                            w.pending,
                            w.removed,
                            w.must_reply,
                            w.nonce,
                            w.acked_nonce,
                        )
                        for t, w in c.watches.items()
                    },
                )
                for c in feed.ads.connections.values()
            ]
            raise RuntimeError(f"change not ACKed: {st}")
        await asyncio.sleep(0.0005)
    return max(t for t, *_ in feed.acks[since:])


async def changes(feed: Feed, model: Model, reps: int, lport: int) -> dict:
    eds, add = [], []
    for r in range(reps):
        since = len(feed.acks)
        _, ch = model.move(r * 7 % model.n, 1 + r // (model.n // 7 + 1))
        t0 = time.monotonic()
        feed.ads.push(ch)
        eds.append((await wait_settled(feed, since)) - t0)
        await asyncio.sleep(0.05)
    for _ in range(reps):
        since = len(feed.acks)
        name, ch = model.add()
        t0 = time.monotonic()
        feed.ads.push(ch)
        t_ack = await wait_settled(feed, since)
        s, _ = await asyncio.to_thread(proc.http_get, lport, "/", name, 5.0)
        if s != 200:
            raise RuntimeError(f"new service {name}: {s}")
        add.append(t_ack - t0)
        await asyncio.sleep(0.05)

    def ms(xs: list[float]) -> dict:
        return {
            "p50_ms": round(statistics.median(xs) * 1000, 2),
            "p99_ms": round(pct(xs, 99) * 1000, 2),
            "max_ms": round(max(xs) * 1000, 2),
            "each_ms": [round(x * 1000, 2) for x in xs],
        }

    return {"endpoint_change": ms(eds), "new_service": ms(add)}


# --- K Delta ADS clients in a child process ------------------------------------------------


async def client_main(port: int, k: int) -> None:
    import grpc
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from sofamesh.xds.client import message_class

    opts = [("grpc.max_receive_message_length", 1 << 30)]
    ready = {"n": k}
    live = {"on": False}
    out = sys.stdout

    async def one(i: int) -> None:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        q: asyncio.Queue = asyncio.Queue()

        async def reqs():
            while True:
                yield await q.get()

        call = stub.DeltaAggregatedResources(reqs())
        first = discovery_pb2.DeltaDiscoveryRequest(type_url=CDS)
        first.node.id = f"sidecar~127.0.0.{i % 250 + 1}~bench-{i}.ns~ns.svc.cluster.local"
        q.put_nowait(first)
        q.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=LDS))
        have: dict[str, set] = {CDS: set(), EDS: set(), LDS: set(), SRDS: set(), RDS: set()}
        subscribed: dict[str, set] = {EDS: set(), RDS: set()}
        scoped = False
        seen: set = set()
        async for resp in call:
            t = resp.type_url
            cls = message_class(t)
            new_rds: set = set()
            for r in resp.resources:  # parse as a proxy must
                m = cls.FromString(r.resource.value)
                have[t].add(r.name)
                if t == SRDS:
                    new_rds.add(m.route_configuration_name)
                if t != LDS:
                    continue
                for fc in m.filter_chains:
                    for f in fc.filters:
                        if f.typed_config.type_url.endswith("HttpConnectionManager"):
                            hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                            if hcm.HasField("rds"):
                                new_rds.add(hcm.rds.route_config_name)
                            elif hcm.HasField("scoped_routes") and not scoped:
                                scoped = True
                                q.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=SRDS))
            for n in resp.removed_resources:
                have[t].discard(n)
            q.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce))
            if live["on"]:
                out.write(f"ACK {i} {t.rsplit('.', 1)[-1]} {time.monotonic():.6f}\n")
                out.flush()
            # what this response brought (a diff of whole sets per response would cost the
            # 100 clients of one process more than the pilot's work)
            fresh = [r.name for r in resp.resources] if t == CDS else ()
            for st, src in ((EDS, fresh), (RDS, new_rds)):
                new = {n for n in src if n not in subscribed[st]}
                if new:
                    subscribed[st] |= new
                    q.put_nowait(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=st, resource_names_subscribe=sorted(new)
                        )
                    )
            seen.add(t)
            if len(seen) == 4 + scoped and not live["on"] and i not in ready:
                ready[i] = True
                ready["n"] -= 1
                if ready["n"] == 0:
                    live["on"] = True
                    # the clients stand in for 100 Envoys, which have no GC pauses: this
                    # process's own full collections must not count against the pilot
                    gc.collect()
                    gc.freeze()
                    out.write("READY\n")
                    out.flush()

    await asyncio.gather(*(one(i) for i in range(k)))


async def run_clients(n: int, k: int, reps: int, up: Upstream, scoped: bool) -> dict:
    if (os.cpu_count() or 1) > 1:  # the pilot (this process) on core 0, its clients on core 1
        os.sched_setaffinity(0, {0})
    model = Model(n, proc.free_port(), up.port, scoped)
    feed = Feed(model)
    await feed.start()
    child = subprocess.Popen(  # noqa: ASYNC220 - starts at once; read by a thread
        proc.pin([sys.executable, __file__, "--client-child", str(feed.port), str(k)], 1),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def pump() -> None:
        for line in child.stdout:
            loop.call_soon_threadsafe(lines.put_nowait, line.split())

    threading.Thread(target=pump, daemon=True).start()
    t0 = time.monotonic()
    try:
        while True:
            got = await asyncio.wait_for(lines.get(), 600)
            if got == ["READY"]:
                break
        initial_s = time.monotonic() - t0
        await asyncio.sleep(1.0)
        lats: list[float] = []
        per_change: list[float] = []  # the last client's ACK, per change (ms)
        server_lats: list[float] = []  # the pilot's clock: push -> each stream's RDS ACK read
        first_sent: list[float] = []  # push -> the first RDS ACK the pilot read
        bytes_sent: list[int] = []
        for _ in range(reps):
            while not lines.empty():
                lines.get_nowait()
            _, ch = model.add()
            t0 = time.monotonic()
            resp_before = sum(c.responses for c in feed.ads.connections.values())
            feed.ads.push(ch)
            # every client ends with an ACK of the last type the change reaches (RDS)
            done: dict[str, float] = {}
            deadline = time.monotonic() + 30
            while len(done) < k:
                try:
                    got = await asyncio.wait_for(lines.get(), deadline - time.monotonic())
                except TimeoutError:
                    raise RuntimeError(f"only {len(done)} of {k} clients ACKed") from None
                if got[0] == "ACK" and got[2] == "RouteConfiguration":
                    done[got[1]] = float(got[3])
            lats += [t - t0 for t in done.values()]
            per_change.append(round((max(done.values()) - t0) * 1000, 1))
            since = [a for a in feed.acks if a[0] >= t0 and a[2] == RDS]
            last: dict[str, float] = {}
            for t_ack, conn, _, _ in since:
                last[conn] = max(last.get(conn, 0.0), t_ack)
            server_lats += [t - t0 for t in last.values()]
            first_sent.append(min(t for t, *_ in since) - t0 if since else 0.0)
            bytes_sent.append(sum(c.responses for c in feed.ads.connections.values()) - resp_before)
            await asyncio.sleep(0.3)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(10)
        await feed.ads.stop(0)
    return {
        "clients": k,
        "services": n,
        "scoped_routes": scoped,
        "initial_s": round(initial_s, 2),
        "new_service_p50_ms": round(statistics.median(lats) * 1000, 1),
        "new_service_p99_ms": round(pct(lats, 99) * 1000, 1),
        "new_service_max_ms": round(max(lats) * 1000, 1),
        "pilot_clock_p50_ms": round(statistics.median(server_lats) * 1000, 1),
        "pilot_clock_p99_ms": round(pct(server_lats, 99) * 1000, 1),
        "first_ack_p50_ms": round(statistics.median(first_sent) * 1000, 1),
        "last_client_ms_per_change": per_change,
        "responses_per_change": statistics.median(bytes_sent),
    }


async def main(args) -> None:
    if (os.cpu_count() or 1) > 1:  # the proxies have core 0 to themselves
        os.sched_setaffinity(0, {1})
    up = Upstream()
    work = Path(tempfile.mkdtemp(prefix="xds-scale-"))
    results = []
    proxies = [p for p in args.proxies.split(",") if p and p != "none"]
    for n in [int(x) for x in args.services.split(",")]:
        for rnd in range(args.rounds):
            for kind in proxies:
                r = await run_proxy(kind, n, args, up, work)
                r["round"] = rnd
                print(json.dumps(r), flush=True)
                results.append(r)
    clients = None
    if args.clients:
        clients = await run_clients(
            args.clients_services, args.clients, args.changes or 5, up, not args.one_route_config
        )
        print(json.dumps(clients), flush=True)
    print()
    print(
        f"{'services':>9} {'proxy':>9} {'ready s':>8} {'RSS MB':>8} "
        f"{'EDS chg p50/p99 ms':>20} {'new svc p50/p99 ms':>20}"
    )
    for r in results:
        e, a = r.get("endpoint_change"), r.get("new_service")
        print(
            f"{r['services']:>9} {r['proxy']:>9} {r['ready_s']:>8} {r['rss_mb']:>8} "
            f"{(str(e['p50_ms']) + ' / ' + str(e['p99_ms'])) if e else '-':>20} "
            f"{(str(a['p50_ms']) + ' / ' + str(a['p99_ms'])) if a else '-':>20}"
        )
    by = {(r["services"], r["round"], r["proxy"]): r for r in results}
    for n in sorted({r["services"] for r in results}):
        ready, rss = [], []
        for rnd in range(args.rounds):
            e, s = by.get((n, rnd, "envoy")), by.get((n, rnd, "sofamesh"))
            if e and s:
                ready.append(s["ready_s"] / e["ready_s"])
                rss.append(s["rss_mb"] / e["rss_mb"])
        if ready:
            print(
                f"{n:>9} sofamesh/envoy: ready {statistics.median(ready):.3f}, "
                f"RSS {statistics.median(rss):.3f}"
                + (
                    f" (medians of {len(ready)} rounds: ready "
                    f"{', '.join(f'{x:.3f}' for x in ready)}; RSS "
                    f"{', '.join(f'{x:.3f}' for x in rss)})"
                    if len(ready) > 1
                    else ""
                )
            )
    if clients:
        print(
            f"pilot, {clients['clients']} Delta clients at {clients['services']} services: "
            f"new service p50 {clients['new_service_p50_ms']} ms, "
            f"p99 {clients['new_service_p99_ms']} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"proxies": results, "clients": clients}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-child":
        asyncio.run(client_main(int(sys.argv[2]), int(sys.argv[3])))
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", default="1000,10000,50000")
    ap.add_argument("--proxies", default="envoy,sofamesh")
    ap.add_argument("--changes", type=int, default=20, help="repetitions of each change")
    ap.add_argument("--changes-at", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=0)
    ap.add_argument("--clients-services", type=int, default=10000)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved runs of each proxy")
    ap.add_argument(
        "--one-route-config",
        action="store_true",
        help="the pilot without scoped routes: one route config of every service",
    )
    ap.add_argument("--wrap", default="", help="prefix for the sofamesh command (a profiler)")
    asyncio.run(main(ap.parse_args()))
