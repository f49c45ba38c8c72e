"""Runs the sidecar: the admin API in the main process and the Server in N workers.

`--concurrency 1`: one process; the Server and the admin share one uvloop loop.
`--concurrency N` (N > 1): N worker processes, each running a Server on the same
listeners (SO_REUSEPORT; listeners configured with port 0 get one port, reserved by the
main process with a bound, never-listening SO_REUSEPORT socket, and written into the
workers' bootstrap). The main process serves admin and supervises the workers:

    main process (admin, supervisor)
       | socketpair per worker: frames = 4-byte big-endian length + JSON
       |   main -> worker: {"op": "snapshot" | "topology" | "health" | "drain" |
       |                    "reset_counters" | "log_levels" | "reopen_logs" | "stop" |
       |                    "xds_apply" | "xds_end_warming", "id": n, ...}
       |                   {"op": "hc_flags", ...}: health check results, no id, no reply
       |   worker -> main: one reply frame per request ({"_id": n, ...}), and events
       |                   ({"event": "xds_state", ...}: a dynamic cluster warmed;
       |                    "hc_hosts" | "hc_traffic" | "hc_remove": proxy.health_check)
       v
    worker i: Server(bootstrap, stats=Store(), options) on its own uvloop loop
       + maps the token bucket region (a memfd the main process creates and keeps;
         its fd is inherited and named in the init frame as "buckets_fd"), so every
         local_ratelimit bucket is one slot shared by all workers (_core/ratelimit.pyx)

With `dynamic_resources`, the main process holds the one ADS stream and every worker
applies each update before it is ACKed (sofamesh.proxy.pool_xds).

Stats are summed on request: /stats asks every worker for `Store.snapshot()` and adds
them up (admin.stats_format.merge). A worker that dies is logged, counted in
`server.worker_deaths` and restarted; SIGTERM, SIGINT or /quitquitquit stop them all.
A worker exits by itself when the main process goes away (its socket reaches EOF).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gc
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from sofamesh.admin.backend import (
    add_worker_stats,
    describe_server,
    merge_topologies,
    reopen_server_logs,
)
from sofamesh.proxy import hot_restart, load_stats, metrics_sink

log = logging.getLogger("sofamesh.main")

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0


def settle_gc() -> None:
    """Once the server is up: what start-up built (config, route tables, clusters, the
    interpreter's own objects) moves to the permanent generation, which collections skip,
    and young collections run less often. Per-request objects are freed by refcounting;
    the cyclic GC only has to find the rare cycle, and walking the whole config on every
    full collection cost several % of CPU under load (PERF(benchmarks/h2_bench.py):
    gc_collect_main 5% of samples)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return asyncio.new_event_loop()


def run(bootstrap: Any, opts: Any, report: Any = None) -> int:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        if opts.concurrency <= 1:
            return runner.run(_serve_single(bootstrap, opts, report))
        return runner.run(_serve_pool(bootstrap, opts, report))


def _admin_address(bootstrap: Any) -> tuple[str, int] | None:
    if not bootstrap.HasField("admin") or not bootstrap.admin.HasField("address"):
        return None
    sa = bootstrap.admin.address.socket_address
    return sa.address or "127.0.0.1", sa.port_value


async def _start_admin(bootstrap: Any, opts: Any, backend: Any) -> tuple[Any, Any]:
    from sofamesh.admin.handlers import AdminState
    from sofamesh.admin.server import AdminServer

    state = AdminState(bootstrap, opts, backend)
    admin = AdminServer(state)
    addr = _admin_address(bootstrap)
    if addr is not None:
        bound = await admin.start(*addr, sock=hot_restart.take("admin"))
        log.info("admin address: %s:%d", bound[0], bound[1])
        if opts.admin_address_path:
            with open(opts.admin_address_path, "w") as f:  # noqa: ASYNC230 - once, at start
                f.write(f"{bound[0]}:{bound[1]}")
    return state, admin


def _install_signals(loop: asyncio.AbstractEventLoop, state: Any) -> None:
    """SIGTERM/SIGINT stop; SIGUSR1 reopens the logs (Envoy's signals)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, state.quit.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(state.reopen_logs()))


def _count_passthrough(store: Any, report: Any) -> None:
    if report is not None and report.passthrough:
        g = store.gauge("server.passthrough_filters")
        g.value = len(report.passthrough)
        g.used = True


async def _serve_single(bootstrap: Any, opts: Any, report: Any) -> int:
    from sofamesh._core.stats import Store
    from sofamesh.admin.backend import LocalBackend
    from sofamesh.admin.handlers import STATE_LIVE
    from sofamesh.proxy.server import Server

    store = Store()
    _count_passthrough(store, report)
    # hot restart: the epoch we take over from (its admin and listening sockets first)
    parent = await hot_restart.predecessor(opts)
    links: list = []
    if parent is not None:
        links = await asyncio.to_thread(
            hot_restart.take_servers, opts.base_id, opts.restart_epoch, parent.plan(0, 1)
        )
    try:
        server = Server(bootstrap, stats=store, options=opts)
    except Exception as e:  # noqa: BLE001 - reported, the process keeps running
        log.critical("error initializing server: %s", e)
        return 1
    backend = LocalBackend(server, store)
    state, admin = await _start_admin(bootstrap, opts, backend)
    if parent is not None:
        state.started_all = parent.started_all
    _install_signals(asyncio.get_running_loop(), state)
    try:
        await server.start()
    except Exception as e:  # noqa: BLE001 - reported, the process keeps running
        log.critical("error initializing server: %s", e)
        await admin.stop()
        return 1
    if opts.mode == "init_only":
        await server.stop()
        await admin.stop()
        return 0
    lrs = load_stats.start(bootstrap, backend, store, opts)  # cluster_manager.load_stats_config
    sinks = metrics_sink.start(bootstrap, state, store, opts)  # stats_sinks
    state.state = STATE_LIVE
    settle_gc()
    log.info("all dependencies initialized. starting workers")
    if not opts.disable_hot_restart:
        hot_restart.serve_single(opts, server, admin, state, backend)
    if parent is not None:
        hot_restart.go_live(server, links)
        parent.drain(backend)
    await state.quit.wait()
    log.info("shutting down")
    for sink in sinks:
        await sink.stop()
    if lrs is not None:
        await lrs.stop()
    await admin.stop()
    await server.stop()
    return 0


# ---- the pool ------------------------------------------------------------------------


async def _read_frame(reader: asyncio.StreamReader) -> dict:
    n = struct.unpack(">I", await reader.readexactly(4))[0]
    return json.loads(await reader.readexactly(n))


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj, default=_json_default).encode()
    return struct.pack(">I", len(data)) + data


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def reserve_ports(
    bootstrap: Any, known: dict[str, int] | None = None
) -> tuple[Any, list[socket.socket]]:
    """A copy of `bootstrap` where each port-0 listener has a real port, and the sockets
    holding those ports (bound with SO_REUSEPORT, never listening, so they get no traffic).
    `known` (hot restart): the previous epoch's ports by listener name, kept (held when the
    previous epoch's sockets allow it; its sockets, which this epoch takes, hold them)."""
    b = copy.deepcopy(bootstrap)
    held = []
    for lst in b.static_resources.listeners:
        sa = lst.address.socket_address
        if lst.address.HasField("socket_address") and sa.port_value == 0:
            fam = socket.AF_INET6 if ":" in sa.address else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            port = (known or {}).get(lst.name, 0)
            try:
                s.bind((sa.address or "0.0.0.0", port))
            except OSError:  # the previous epoch bound it without SO_REUSEPORT
                s.close()
                sa.port_value = port
                continue
            sa.port_value = s.getsockname()[1]
            held.append(s)
    return b, held


RESTART_QUICK_S = 5.0


def _backoff(failures: int) -> float:
    return 0.0 if failures <= 0 else min(30.0, 0.5 * 2 ** (failures - 1))


class Worker:
    """The main process's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.started_at = 0.0
        self.failures = 0  # consecutive quick deaths
        self.next_restart = 0.0
        self.proc: subprocess.Popen | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.seq = 0  # request ids: a late reply to a timed-out request is dropped
        self.pending: dict[int, asyncio.Future] = {}  # request id -> its reply
        self.ready = False
        self.last_topology: dict | None = None
        self.on_event: Any = None  # callable(index, frame) for frames that are not replies
        self._reading: asyncio.Task | None = None

    async def spawn(
        self,
        bootstrap_bin: bytes,
        opts: Any,
        buckets_fd: int = -1,
        xds: Any = None,
        hot: dict | None = None,
    ) -> None:
        """Starts the worker process. `buckets_fd` (>= 0): the shared token bucket region
        (`ratelimit.BucketRegion`), inherited at the same number and named in the init frame.
        `xds`: (updates, ended) from `PoolApplier.replay()`, applied before the worker serves.
        `hot`: hot restart, the previous epoch's servers it takes over (`Predecessor.plan`)."""
        parent, child = socket.socketpair()
        env = dict(os.environ)
        fds = [child.fileno()] + ([buckets_fd] if buckets_fd >= 0 else [])
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - fork+exec only; waits are polled
            [sys.executable, "-m", "sofamesh.proxy.workers", str(child.fileno())],
            pass_fds=fds,
            env=env,
            start_new_session=False,
        )
        child.close()
        self.reader, self.writer = await asyncio.open_connection(sock=parent)
        d = opts.to_dict()
        d["worker_index"] = self.index
        init = {"options": d, "bootstrap": base64.b64encode(bootstrap_bin).decode()}
        if buckets_fd >= 0:
            init["buckets_fd"] = buckets_fd
        if xds is not None:
            init["xds"], init["xds_ended"] = xds
        if hot is not None:
            init["hot_restart"] = hot
        self.writer.write(_frame(init))
        await self.writer.drain()
        try:
            msg = await asyncio.wait_for(_read_frame(self.reader), READY_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
            self._kill()
            raise RuntimeError(f"worker {self.index} did not start: {type(e).__name__}") from None
        if "error" in msg:
            self._kill()
            raise RuntimeError(f"worker {self.index}: {msg['error']}")
        self.last_topology = msg.get("topology")
        self.ready = True
        if "xds_state" in msg and self.on_event is not None:
            self.on_event(self.index, {"event": "xds_state", "state": msg["xds_state"]})
        self._reading = asyncio.get_running_loop().create_task(self._read_loop(self.reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        """Hands replies to their requests, events to `on_event`, until the worker goes."""
        try:
            while True:
                msg = await _read_frame(reader)
                fut = self.pending.pop(msg.pop("_id", None), None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                elif "event" in msg and self.on_event is not None:
                    self.on_event(self.index, msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"worker {self.index} went away"))
            self.pending.clear()

    async def request(self, op: str, timeout: float = 5.0, **kw: Any) -> dict:
        if not self.ready or self.writer is None or self.reader is None:
            raise ConnectionError(f"worker {self.index} is not running")
        self.seq += 1
        seq = self.seq
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        try:
            self.writer.write(_frame({"op": op, "id": seq, **kw}))
            await self.writer.drain()
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(seq, None)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive():
            try:
                await self.request("stop", timeout=STOP_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - the worker is killed below
                log.debug("worker %d did not answer stop: %s", self.index, e)
        if self.writer is not None:
            self.writer.close()
        if self._reading is not None:
            self._reading.cancel()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.ready = False


class PoolBackend:
    """Admin's view of N workers: requests fan out, results are summed."""

    def __init__(self, workers: list[Worker], store: Any, dynamic: Any = None) -> None:
        self.pool = workers
        self.store = store  # the main process's own stats (worker deaths, ...)
        self.workers = len(workers)
        self.health_failed = False
        self.dynamic = dynamic  # pool_xds.PoolApplier with dynamic_resources (admin's dumps)
        self.inherited: dict | None = None  # hot restart: the previous epoch's counters

    def live(self) -> list[Worker]:
        return [w for w in self.pool if w.ready and w.alive()]

    async def _all(self, op: str, **kw: Any) -> list[dict]:
        res = await asyncio.gather(
            *(w.request(op, **kw) for w in self.live()), return_exceptions=True
        )
        return [r for r in res if isinstance(r, dict)]

    async def snapshot(self) -> dict:
        from sofamesh.admin.stats_format import merge

        live = self.live()
        res = await asyncio.gather(*(w.request("snapshot") for w in live), return_exceptions=True)
        snaps: list[dict] = []
        for w, r in zip(live, res):
            if isinstance(r, dict) and "counters" in r:
                if snaps and self.dynamic is not None:
                    _drop_xds_stats(r)  # counted once, as Envoy's main thread counts them
                snaps.append(add_worker_stats(r, w.index))
            else:  # a worker that does not answer: its stats are missing, and that shows
                c = self.store.counter("server.worker_stats_unavailable")
                c.value += 1
                c.used = True
                log.warning("worker %d did not return its stats: %r", w.index, r)
        if self.inherited is not None:  # added as Envoy's child adds its parent's
            snaps.append(self.inherited)
        return merge([*snaps, self.store.snapshot()])

    async def topology(self) -> dict:
        tops = await self._all("topology")
        if not tops:
            cached = [w.last_topology for w in self.pool if w.last_topology]
            tops = cached[:1]
        return merge_topologies(tops)

    async def set_health_failed(self, failed: bool) -> None:
        self.health_failed = failed
        await self._all("health", failed=failed)

    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        await self._all("drain", inbound_only=inbound_only, graceful=graceful)

    async def reset_counters(self) -> None:
        self.store.reset_counters()
        await self._all("reset_counters")

    async def set_log_levels(self, levels: dict[str, str]) -> None:
        await self._all("log_levels", levels=levels)

    async def reopen_logs(self) -> None:
        await self._all("reopen_logs")

    def live_workers(self) -> int:
        return len(self.live())


# Stats of applying xDS updates: every worker applies each update, Envoy counts it once.
_XDS_STAT = re.compile(
    r"^(cluster_manager\.cluster_(added|modified|removed)"
    r"|listener_manager\.listener_(added|modified|removed)"
    r"|cluster\..+\.update_(attempt|success|rejected|empty|no_rebuild|failure)"
    r"|http\..+\.rds\..+\.(update_\w+|config_reload))$"
)


def _drop_xds_stats(snap: dict) -> None:
    for kind in ("counters", "gauges"):
        for name in [n for n in snap[kind] if _XDS_STAT.match(n)]:
            del snap[kind][name]


async def _serve_pool(bootstrap: Any, opts: Any, report: Any) -> int:
    from sofamesh._core.ratelimit import BucketRegion
    from sofamesh._core.stats import Store
    from sofamesh.admin.handlers import STATE_LIVE

    # Token buckets shared by all workers (local_ratelimit), kept for the life of the
    # pool: a restarted worker maps the same region and finds its buckets' tokens.
    buckets = BucketRegion.create()
    parent = await hot_restart.predecessor(opts)  # hot restart: the epoch we take over from
    wb, held = reserve_ports(bootstrap, parent.ports if parent is not None else None)
    bootstrap_bin = wb.SerializeToString()
    store = Store()
    _count_passthrough(store, report)
    pool = [Worker(i) for i in range(opts.concurrency)]
    xds = None
    if bootstrap.HasField("dynamic_resources"):
        from sofamesh.proxy.pool_xds import PoolApplier

        xds = PoolApplier(pool)
    health = _pool_health(pool, store)
    outliers = _pool_outlier(pool, store, bootstrap)

    def on_event(i: int, msg: dict) -> None:
        if msg.get("event", "").startswith("hc_"):
            health.on_event(i, msg)
        elif msg.get("event", "").startswith("od_"):
            outliers.on_event(i, msg)
        elif msg.get("event") == "hr_drained":
            drained.add(i)
        elif xds is not None:
            xds.on_state(i, msg["state"])

    for w in pool:
        w.on_event = on_event
    backend = PoolBackend(pool, store, xds)
    state, admin = await _start_admin(bootstrap, opts, backend)  # config_dump: as given
    if parent is not None:
        state.started_all = parent.started_all
    _install_signals(asyncio.get_running_loop(), state)
    client = None
    try:
        await asyncio.gather(
            *(
                w.spawn(
                    bootstrap_bin,
                    opts,
                    buckets.fd,
                    xds.replay() if xds else None,
                    parent.plan(w.index, len(pool)) if parent is not None else None,
                )
                for w in pool
            )
        )
        if xds is not None:  # the one stream; LIVE once its initial fetch is done
            client = _start_pool_client(bootstrap, xds, store)
            await client.initialized.wait()
        await _first_checks(bootstrap, health)
    except Exception as e:  # noqa: BLE001 - reported, the process keeps running
        log.critical("error initializing workers: %s", e)
        if client is not None:
            await client.stop()
        await asyncio.gather(*(w.stop() for w in pool))
        await admin.stop()
        return 1
    if opts.mode == "init_only":
        if client is not None:
            await client.stop()
        await asyncio.gather(*(w.stop() for w in pool))
        await admin.stop()
        return 0
    state.state = STATE_LIVE
    log.info("all dependencies initialized. %d workers started", len(pool))
    deaths = store.counter("server.worker_deaths")
    deaths.used = True
    draining: set[int] = set()  # hot restart: workers handing over to the next epoch
    drained: set[int] = set()  # ... and done (event hr_drained)
    if not opts.disable_hot_restart:
        hot_restart.serve_pool(opts, wb, pool, admin, state, backend, draining, drained)
    if parent is not None:  # our workers take over, then the old main drains and exits
        await asyncio.gather(*(w.request("hr_take_over") for w in pool), return_exceptions=True)
        parent.drain(backend)

    async def supervise() -> None:
        # A worker that dies within RESTART_QUICK_S of starting is restarted after a
        # doubling delay (0.5 s .. 30 s), so a crash loop does not spin.
        for w in pool:
            w.started_at = time.monotonic()
        while not state.quit.is_set():
            await asyncio.sleep(0.1)
            for w in pool:
                if w.alive() or state.quit.is_set() or w.index in draining:
                    continue
                now = time.monotonic()
                if w.ready:  # a death just noticed
                    code = w.proc.returncode if w.proc else None
                    deaths.value += 1
                    w.ready = False
                    if w.writer is not None:
                        w.writer.close()
                    quick = now - w.started_at < RESTART_QUICK_S
                    w.failures = w.failures + 1 if quick else 0
                    w.next_restart = now + _backoff(w.failures)
                    log.error(
                        "worker %d exited (status %s); restarting in %.1f s",
                        w.index,
                        code,
                        w.next_restart - now,
                    )
                if now < w.next_restart:
                    continue
                try:
                    w.started_at = now
                    if xds is None:
                        await w.spawn(bootstrap_bin, opts, buckets.fd)
                    else:  # under the update lock: it gets the current config, misses none
                        async with xds.lock:
                            await w.spawn(bootstrap_bin, opts, buckets.fd, xds.replay())
                    if backend.health_failed:
                        await w.request("health", failed=True)
                except Exception as e:  # noqa: BLE001 - reported, the process keeps running
                    w.failures += 1
                    w.next_restart = time.monotonic() + _backoff(w.failures)
                    log.error("worker %d failed to restart: %s", w.index, e)

    sup = asyncio.create_task(supervise())
    lrs = load_stats.start(bootstrap, backend, store, opts)  # cluster_manager.load_stats_config
    sinks = metrics_sink.start(bootstrap, state, store, opts)  # stats_sinks
    await state.quit.wait()
    log.info("shutting down")
    for sink in sinks:
        await sink.stop()
    if lrs is not None:
        await lrs.stop()
    sup.cancel()
    try:
        await sup
    except asyncio.CancelledError:
        pass
    await admin.stop()
    health.stop()
    outliers.stop()
    if client is not None:
        await client.stop()
    await asyncio.gather(*(w.stop() for w in pool))
    for s in held:
        s.close()
    buckets.close()
    return 0


def _pool_health(pool: list[Worker], store: Any) -> Any:
    """Active health checks run once, here, as on Envoy's main thread; every change of a
    host's flags goes to every live worker as an `hc_flags` frame (no reply)."""
    from sofamesh.proxy.health_check import PoolHealth

    def send_to(index: int, frame: dict) -> None:
        w = pool[index]
        if w.ready and w.writer is not None and not w.writer.is_closing():
            w.writer.write(_frame(frame))

    def broadcast(frame: dict) -> None:
        data = _frame(frame)
        for w in pool:
            if w.ready and w.writer is not None and not w.writer.is_closing():
                w.writer.write(data)

    return PoolHealth(store, broadcast, send_to)


def _pool_outlier(pool: list[Worker], store: Any, bootstrap: Any) -> Any:
    """Outlier detection decides here, as on Envoy's main thread (proxy/outlier.py
    PoolOutlier): workers send thresholds reached and success-rate buckets, every change
    goes to every live worker as an `od_flags` frame (no reply)."""
    from sofamesh.proxy.outlier import PoolOutlier

    def send_to(index: int, frame: dict) -> None:
        w = pool[index]
        if w.writer is not None and not w.writer.is_closing():
            w.writer.write(_frame(frame))

    def broadcast(frame: dict) -> None:
        data = _frame(frame)
        for w in pool:
            if w.ready and w.writer is not None and not w.writer.is_closing():
                w.writer.write(data)

    path = bootstrap.cluster_manager.outlier_detection.event_log_path
    return PoolOutlier(store, broadcast, send_to, path)


async def _first_checks(bootstrap: Any, health: Any) -> None:
    """Envoy initializes a checked static cluster after each host's first check."""
    from sofamesh.proxy.health_check import parse

    names, bound = [], 0.0
    for c in bootstrap.static_resources.clusters:
        if c.health_checks:
            cfg = parse(c, c.name)
            names.append(c.name)
            bound = max(bound, cfg.initial_jitter + cfg.timeout)
    if names:
        await health.first_round(names, bound + 5.0)


def _start_pool_client(bootstrap: Any, xds: Any, store: Any) -> Any:
    """The pool's one ADS client, in the main process (its stats go to the main's store)."""
    from sofamesh.xds.client import AdsClient
    from sofamesh.xds.settings import AdsSettings

    client = AdsClient(AdsSettings.from_bootstrap(bootstrap), xds, store)
    xds.client = client
    client.start()
    return client


# ---- inside a worker -------------------------------------------------------------------


async def _worker_main(fd: int) -> int:
    from sofamesh._core.stats import Store
    from sofamesh.admin.backend import apply_log_levels
    from sofamesh.config import protos
    from sofamesh.proxy.cli import Options, setup_logging

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    init = await _read_frame(reader)
    opts = Options(**init["options"])
    setup_logging(opts)
    wlog = logging.getLogger("sofamesh.main")
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    if "buckets_fd" in init:  # before any bucket is built: see ratelimit.share_buckets
        from sofamesh._core.ratelimit import BucketRegion, share_buckets

        share_buckets(BucketRegion.attach(init["buckets_fd"]))
        os.close(init["buckets_fd"])
    bootstrap = bootstrap_pb2.Bootstrap.FromString(base64.b64decode(init["bootstrap"]))
    protos.ensure_types(bootstrap)  # typed_config Anys unpack by type URL
    from sofamesh.proxy.server import Server

    store = Store()
    feed = None
    if "xds" in init:  # the main process's ADS stream feeds this worker
        from sofamesh.proxy.pool_xds import WorkerFeed

        feed = WorkerFeed(init["xds"], init.get("xds_ended", []), lambda m: writer.write(_frame(m)))
    from sofamesh.proxy.health_check import RemoteLink
    from sofamesh.proxy.outlier import WorkerLink

    links: list = []  # hot restart: the previous epoch's servers this one takes over
    if "hot_restart" in init:
        links = await asyncio.to_thread(
            hot_restart.take_servers, opts.base_id, opts.restart_epoch, init["hot_restart"]
        )
    try:
        server = Server(bootstrap, stats=store, options=opts)
        server.xds_feed = feed
        # health checks run in the main process; this worker applies their results
        server.health_link = RemoteLink(lambda m: writer.write(_frame(m)))
        # outlier detection decides in the main process; this worker counts and applies
        server.outlier_link = WorkerLink(lambda m: writer.write(_frame(m)))
        await server.start()
    except Exception as e:  # noqa: BLE001 - reported, the process keeps running
        wlog.critical("worker %d: error initializing server: %s", opts.worker_index, e)
        writer.write(_frame({"error": f"{type(e).__name__}: {e}"}))
        await writer.drain()
        return 1
    ready: dict[str, Any] = {"ready": True, "topology": describe_server(server)}
    if feed is not None:
        from sofamesh.proxy.pool_xds import worker_state

        ready["xds_state"] = worker_state(server.dynamic)
        feed.live = True
    writer.write(_frame(ready))
    settle_gc()
    server.health_link.go_live()  # its events (hc_hosts, ...) follow the ready frame
    server.outlier_link.go_live()  # (od_hosts, ...)
    await writer.drain()
    successor = None  # hot restart: what this worker's successor asks
    if not opts.disable_hot_restart:
        successor = hot_restart.ServerSuccessor.serve(
            opts, server, opts.worker_index, os.getppid(),
            lambda: writer.write(_frame({"event": "hr_drained"})),
        )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles ^C

    async def commands() -> None:
        while True:
            try:
                msg = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                stop.set()  # main process gone
                return
            op = msg.get("op")
            if op == "hc_flags":  # pushed by the main process's health checks: no reply
                server.health_link.apply(msg)
                continue
            if op == "od_flags":  # pushed by the main process's outlier detection
                server.outlier_link.apply(msg)
                continue
            reply: dict[str, Any] = {"ok": True}
            try:
                if op == "snapshot":
                    reply = store.snapshot()
                elif op == "topology":
                    reply = describe_server(server)
                elif op == "health":
                    server.health_failed = bool(msg.get("failed"))
                elif op == "drain":
                    await server.drain_listeners(
                        inbound_only=bool(msg.get("inbound_only")),
                        graceful=bool(msg.get("graceful")),
                    )
                elif op == "reset_counters":
                    store.reset_counters()
                elif op == "log_levels":
                    apply_log_levels(msg.get("levels", {}))
                elif op == "reopen_logs":
                    reopen_server_logs(server)
                elif op == "xds_apply":
                    from sofamesh.proxy.pool_xds import decode_update, worker_state

                    errors = await server.dynamic.apply(decode_update(msg["update"]))
                    reply = {"errors": errors, "state": worker_state(server.dynamic)}
                elif op == "xds_end_warming":
                    from sofamesh.proxy.pool_xds import worker_state

                    server.dynamic.end_warming(msg["kind"])
                    reply = {"state": worker_state(server.dynamic)}
                elif op == "hr_take_over":  # the pool is LIVE: the old servers drain into us
                    hot_restart.go_live(server, links)
                elif op == "hr_drain":  # the next epoch takes over
                    if successor is None:
                        reply = {"drained": True}
                    else:
                        successor.start_drain()
                elif op == "stop":
                    stop.set()
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except Exception as e:  # reported to admin, the worker keeps serving  # noqa: BLE001
                wlog.exception("worker command %s failed", op)
                reply = {"error": f"{type(e).__name__}: {e}"}
            if isinstance(reply, dict) and "id" in msg:
                reply["_id"] = msg["id"]
            writer.write(_frame(reply))
            await writer.drain()
            if op == "stop":
                return

    task = asyncio.create_task(commands())  # (reads the hc_flags awaited below)
    if server.defer_serving:  # health-checked clusters: the pool's current flags first
        if not await server.health_link.current_flags(5.0):
            wlog.warning("worker %d: no health flags from the main process in 5 s: serving "
                         "with the initial ones", opts.worker_index)  # fmt: skip
        await server.serve_all()
    await stop.wait()
    try:
        await server.stop()
    finally:
        task.cancel()
        writer.close()
    return 0


def worker_entry(argv: list[str]) -> int:
    fd = int(argv[0])
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(_worker_main(fd))


if __name__ == "__main__":
    raise SystemExit(worker_entry(sys.argv[1:]))
