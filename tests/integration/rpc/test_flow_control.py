"""Flow control of the RPC proxy when an upstream stops reading: clients of the listener are
not read while its buffer is full (new ones included), and are read again once that upstream
connection is gone (the transport never says "resume" for a connection that died full)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from sofamesh._core.codecs import bolt

from .conftest import (
    Blackhole,
    RawUpstream,
    bolt_filter,
    bootstrap,
    cluster,
    free_port,
    listener,
    route_config,
    sofamesh,
)


def _req(rid: int, service: str, size: int = 1, timeout_ms: int = 60000) -> bytes:
    return bolt.BoltFrame(
        request_id=rid,
        class_name=bolt.SOFA_REQUEST_CLASS,
        timeout=timeout_ms,
        headers={"service": service, "sofa_head_method_name": "m"},
        content=b"\x91" * size,
    ).encode()


def _flood(s: socket.socket, frame: bytes, limit: float = 15.0) -> tuple[int, int]:
    """Sends `frame` over and over until the proxy stops taking bytes for 1 s; returns
    (bytes sent, offset into the frame being sent)."""
    s.setblocking(False)
    sent = off = 0
    start = last = time.monotonic()
    while time.monotonic() - last < 1.0:
        # kernel buffers on both hops hold a few MB; without flow control the proxy
        # would take everything into memory
        assert sent < 64 * 1024 * 1024 and time.monotonic() - start < limit, (
            f"the proxy kept reading ({sent} bytes)"
        )
        try:
            n = s.send(memoryview(frame)[off:])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        off = (off + n) % len(frame)
        last = time.monotonic()
    return sent, off


def _replies_until(s: socket.socket, rid: int, timeout: float) -> list:
    """Decodes replies on `s` until one carries request id `rid`."""
    dec = bolt.BoltDecoder()
    frames: list = []
    deadline = time.monotonic() + timeout
    s.setblocking(True)
    while not any(f.request_id == rid for f in frames):
        left = deadline - time.monotonic()
        assert left > 0, f"no reply for request {rid} ({len(frames)} other replies)"
        s.settimeout(left)
        data = s.recv(65536)
        assert data, "connection closed"
        frames += dec.feed(data)
    return frames


def test_clients_are_read_again_after_a_full_upstream_dies(tmp_path):
    with RawUpstream("stall") as stall:
        port = free_port()
        boot = bootstrap(
            [
                listener(
                    "bolt",
                    port,
                    [
                        bolt_filter(
                            [route_config("com.raw.Stall", "stall")], default_timeout_ms=60000
                        )
                    ],
                )
            ],
            [cluster("stall", [stall.port])],
        )
        big = _req(1, "com.raw.Stall:1.0", size=256 * 1024)
        with (
            sofamesh(boot, tmp_path),
            socket.create_connection(("127.0.0.1", port), timeout=3) as c1,
        ):
            _, off = _flood(c1, big)

            # a client that connects now is not read either (its requests would go to
            # the same full buffers)
            c2 = socket.create_connection(("127.0.0.1", port), timeout=3)
            c2.sendall(_req(3, "com.nobody.Svc:1.0"))
            c2.settimeout(0.5)
            try:
                early = c2.recv(65536)
            except TimeoutError:
                early = None
            assert early is None, early

            stall.kill()
            # the requests held for the dead upstream are answered, and the client is read
            # again: the rest of its last frame and a request after it go through
            c1.setblocking(True)
            c1.settimeout(10)
            tail = memoryview(big)[off:] if off else b""
            c1.sendall(bytes(tail) + _req(2, "com.nobody.Svc:1.0"))
            frames = _replies_until(c1, 2, timeout=10)
            assert [f.status for f in frames if f.request_id == 2] == [bolt.STATUS_NO_PROCESSOR]
            failed = [f.status for f in frames if f.request_id == 1]
            assert failed and set(failed) == {bolt.STATUS_CONNECTION_CLOSED}, set(failed)
            # and the request the second client sent while paused is served now
            with c2:
                got = _replies_until(c2, 3, timeout=10)
            assert [(f.request_id, f.status) for f in got] == [(3, bolt.STATUS_NO_PROCESSOR)]


async def test_connections_to_hosts_that_left_the_cluster_are_closed():
    """A host dropped from its cluster (EDS / DNS update) gets no more requests; once its
    last request is answered its upstream connections are closed, not kept for good."""
    import asyncio
    import json

    from sofamesh.config import load_bootstrap
    from sofamesh.proxy.server import Server

    with RawUpstream("silent") as silent:
        port = free_port()
        boot = bootstrap(
            [
                listener(
                    "bolt",
                    port,
                    [bolt_filter([route_config("com.raw.Silent", "c1")])],
                )
            ],
            [cluster("c1", [silent.port])],
        )
        srv = Server(load_bootstrap(config_yaml=json.dumps(boot)))
        await srv.start()
        try:
            (cfg,) = srv.network_chains[0].parts
            cfg.reap_interval = 0.1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_req(8, "com.raw.Silent:1.0", timeout_ms=200))
            dec = bolt.BoltDecoder()
            frames: list = []
            while not frames:
                frames += dec.feed(await asyncio.wait_for(reader.read(65536), 5))
            assert [(f.request_id, f.status) for f in frames] == [(8, bolt.STATUS_TIMEOUT)]
            assert cfg.upstream_connections == 1
            await asyncio.sleep(0.3)
            assert cfg.upstream_connections == 1  # its host is still in the cluster: kept

            srv.clusters["c1"].set_hosts([])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while cfg.upstream_connections and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert cfg.upstream_connections == 0
            while srv.stats.counter("cluster.c1.upstream_cx_destroy").value == 0:
                assert loop.time() < deadline, "the upstream connection was not closed"
                await asyncio.sleep(0.05)
            assert srv.stats.counter("cluster.c1.upstream_cx_destroy_local").value == 1
            writer.close()
        finally:
            await srv.stop()


class _StallsAtFirstConnect:
    """The proxy's event loop, but its first upstream connect starts `delay` s late (the
    client's requests queue meanwhile) and the loop then stalls for `stall` s in the pass
    that sees that connect complete, as on a machine too busy to run it: when it runs again
    the connect and the connect timeout are both due, the connect seen first. (Seen once
    in CI: the connection was closed after its queued requests had filled its buffer, and
    the listener never read its clients again.)"""

    def __init__(self, loop, delay: float, stall: float):
        self._loop = loop
        self._delay = delay
        self._stall = stall
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        loop.add_reader(self._r.fileno(), self._on_poke)
        self.used = False

    def __getattr__(self, name):
        return getattr(self._loop, name)

    def _on_poke(self) -> None:
        self._r.recv(64)
        time.sleep(self._stall)  # runs in the poll phase, as the connect's completion does

    async def create_connection(self, factory, host, port, **kw):
        if not self.used:
            self.used = True
            await asyncio.sleep(self._delay)
            self._w.send(b"x")  # readable in the same poll as the connect issued just below
        return await self._loop.create_connection(factory, host, port, **kw)

    def close(self) -> None:
        self._loop.remove_reader(self._r.fileno())
        self._r.close()
        self._w.close()


async def _read_replies(reader, want: int, timeout: float) -> list:
    dec = bolt.BoltDecoder()
    frames: list = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(frames) < want:
        left = deadline - loop.time()
        assert left > 0, f"{len(frames)} replies of {want}: {[f.request_id for f in frames]}"
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            continue
        assert data, f"connection closed after {len(frames)} replies"
        frames += dec.feed(data)
    return frames


async def test_a_connect_done_as_its_timeout_fires_does_not_stop_the_listener():
    """The proxy stalls between an upstream connect completing and its connect timeout
    firing. Either outcome is fine (the connection kept, or given up before anything is
    written on it); what must not happen is the connection written full, then dropped
    without a word from the transport, leaving every client of the listener unread."""
    from sofamesh.config import load_bootstrap
    from sofamesh.proxy.server import Server

    with RawUpstream("stall") as stall:
        port = free_port()
        boot = bootstrap(
            [
                listener(
                    "bolt",
                    port,
                    [
                        bolt_filter(
                            [route_config("com.raw.Stall", "stall")], default_timeout_ms=60000
                        )
                    ],
                )
            ],
            [cluster("stall", [stall.port], connect_timeout="1s")],
        )
        srv = Server(load_bootstrap(config_yaml=json.dumps(boot)))
        await srv.start()
        loop = asyncio.get_running_loop()
        stalling = _StallsAtFirstConnect(loop, delay=0.3, stall=1.0)
        try:
            (cfg,) = srv.network_chains[0].parts
            cfg.loop = stalling
            cfg.conns_per_host = 1  # every request on the connection that stalls
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            n = 32  # 8 MB: far more than the kernel takes on a connection nobody reads
            for rid in range(1, n + 1):
                writer.write(_req(rid, "com.raw.Stall:1.0", size=256 * 1024))
            await asyncio.sleep(2.0)  # past the late connect, the stall and the timeout
            assert srv.stats.counter("cluster.stall.upstream_cx_connect_timeout").value == 1
            stall.kill()
            # every request is answered (its upstream is gone) ...
            frames = await _read_replies(reader, n, timeout=15)
            assert sorted(f.request_id for f in frames) == list(range(1, n + 1))
            assert {f.status for f in frames} == {bolt.STATUS_CONNECTION_CLOSED}
            # ... and the listener reads its clients, new and old
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(_req(100, "com.nobody.Svc:1.0"))
            writer.write(_req(101, "com.nobody.Svc:1.0"))
            for r, rid in ((r2, 100), (reader, 101)):
                (got,) = await _read_replies(r, 1, timeout=5)
                assert (got.request_id, got.status) == (rid, bolt.STATUS_NO_PROCESSOR)
            assert cfg.upstream_paused == 0
            w2.close()
            writer.close()
        finally:
            await srv.stop()
            stalling.close()


def test_requests_queued_for_a_connect_in_progress_are_bounded(tmp_path):
    """While an upstream connect hangs (a host that drops SYNs), the proxy stops reading its
    clients once a little is queued for it, instead of taking everything they send into
    memory; at the connect timeout the queued requests are answered and reading resumes."""
    with Blackhole() as hole:
        port = free_port()
        boot = bootstrap(
            [
                listener(
                    "bolt",
                    port,
                    [bolt_filter([route_config("com.raw.Hole", "hole")], default_timeout_ms=60000)],
                )
            ],
            [cluster("hole", [hole.port], connect_timeout="3s")],
        )
        big = _req(1, "com.raw.Hole:1.0", size=256 * 1024)
        with (
            sofamesh(boot, tmp_path),
            socket.create_connection(("127.0.0.1", port), timeout=3) as c1,
        ):
            sent, _ = _flood(c1, big, limit=2.5)  # before the connect times out
            assert sent < 32 * 1024 * 1024, sent
            # at the timeout the requests read so far are answered, and more are read
            c1.setblocking(True)
            frames = _replies_until(c1, 1, timeout=10)
            assert {f.status for f in frames} == {bolt.STATUS_CONNECTION_CLOSED}
