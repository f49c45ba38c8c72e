"""Hot restart: `sofamesh proxy --restart-epoch N` takes over from the sofamesh running as epoch
N-1 (same `--base-id`) and loses nothing: no connection attempt refused or reset, no request
failed, and the plain HTTP/1.1, Dubbo and Bolt connections the old process held move to the
new one whole.

Every serving sofamesh (`--concurrency 1`, unless `--disable-hot-restart`) listens on the
abstract Unix socket `@sofamesh_hot_restart.<base id>.<epoch>` (SOCK_SEQPACKET: one message a
frame, file descriptors attached with SCM_RIGHTS). The new process, epoch N:

1. before it binds anything, connects to epoch N-1's socket and asks for its listening
   sockets: it gets their descriptors with each listener's name (and the admin's, "admin")
   and serves on those very sockets (`take`), so their kernel accept queues never close;
2. once it is LIVE, tells the old process to drain (`Successor.drain` there):
   - the old process stops accepting (it closes its copies of the listening sockets);
   - plain HTTP/1.1 connections are handed over as soon as they are between requests
     (at once if idle, else when their response is done): the descriptor goes to the new
     process with the listener's name, the old one drops its copy without a FIN, and the
     new process serves the connection from its next byte, which waited in the kernel;
   - plain Dubbo and Bolt connections stop being read at a frame boundary, and move once
     the calls in flight are answered (what the client sent meanwhile waits in the kernel);
   - HTTP/2 connections get GOAWAY, and everything else (TLS, RPC, tcp_proxy) drains as
     `/drain_listeners?graceful` does: closed once done, never mid-request;
3. the old process sends its counters every second while draining and a last time as it
   exits (its last connection gone, or `--parent-shutdown-time-s` passed); the new process
   adds them to its own (`/stats`), as Envoy's child adds its parent's.

With `--concurrency N > 1`, hot restart is not implemented (a fresh process starts, as
before, with a warning).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from typing import Any

log = logging.getLogger("sofamesh.hot_restart")

MAX_MSG = 60_000  # bytes of JSON a frame (SOCK_SEQPACKET keeps each one whole)
MAX_FDS = 64  # descriptors a frame
STATS_EVERY_S = 1.0

# what the new process inherited: name -> listening socket, taken as the listeners start
_inherited: dict[str, socket.socket] = {}


def address(base_id: int, epoch: int) -> str:
    return f"\0sofamesh_hot_restart.{base_id}.{epoch}"


def take(name: str) -> socket.socket | None:
    """The listening socket named `name` handed over by the previous epoch, if any."""
    return _inherited.pop(name, None)


async def listen(
    loop: Any, factory: Any, name: str, host: str, port: int, reuse_port: bool, serve: bool
) -> Any:
    """A listener's server: on the socket the previous epoch handed over under `name`, else
    bound to host:port."""
    sock = take(name)
    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=1024, start_serving=serve)
    return await loop.create_server(
        factory,
        host,
        port,
        reuse_port=reuse_port or None,
        backlog=1024,
        reuse_address=True,
        start_serving=serve,
    )


def _send(sock: socket.socket, msg: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(msg, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG + 4096, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _send_stats(sock: socket.socket, snap: dict, final: bool) -> None:
    """Counters (what carries over) in frames of at most MAX_MSG bytes."""
    body = json.dumps({k: v for k, v in snap["counters"].items() if v})
    parts = [body[i : i + MAX_MSG] for i in range(0, len(body), MAX_MSG)] or [""]
    for i, part in enumerate(parts):
        _send(sock, {"op": "stats", "part": part, "more": i < len(parts) - 1, "final": final})


class Predecessor:
    """The new process's side: the link to epoch N-1 (or None when it does not answer)."""

    def __init__(self, sock: socket.socket, epoch: int) -> None:
        self.sock = sock
        self.epoch = epoch
        self.done = threading.Event()

    @classmethod
    def connect(cls, base_id: int, epoch: int, timeout: float = 5.0) -> Predecessor | None:
        """Asks epoch-1 for its listening sockets (filling `take`'s table)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(timeout)
        try:
            sock.connect(address(base_id, epoch - 1))
            _send(sock, {"op": "hello", "epoch": epoch})
            msg, fds = _recv(sock)
        except OSError as e:
            log.warning(
                "hot restart: epoch %d (base id %d) did not answer (%s): starting fresh",
                epoch - 1,
                base_id,
                e,
            )
            sock.close()
            return None
        if msg is None or msg.get("op") != "sockets" or len(msg.get("names", ())) != len(fds):
            for fd in fds:
                os.close(fd)
            log.warning("hot restart: epoch %d sent %r: starting fresh", epoch - 1, msg)
            sock.close()
            return None
        for name, fd in zip(msg["names"], fds):
            s = socket.socket(fileno=fd)
            s.setblocking(False)
            _inherited[name] = s
        log.info("hot restart: took %d listening sockets from epoch %d", len(fds), epoch - 1)
        sock.settimeout(None)
        return cls(sock, epoch)

    def drain(self, server: Any, backend: Any) -> None:
        """Once LIVE: the old process drains into this one. A thread reads what it sends
        (connections handed over, counters) until it says goodbye."""
        for name, leftover in list(_inherited.items()):  # listeners our config no longer has
            log.info("hot restart: listener %s is not in this config: its socket closes", name)
            leftover.close()
            del _inherited[name]
        loop = asyncio.get_running_loop()
        _send(self.sock, {"op": "drain"})
        threading.Thread(
            target=self._read, args=(loop, server, backend), name="hot-restart", daemon=True
        ).start()

    def _read(self, loop: asyncio.AbstractEventLoop, server: Any, backend: Any) -> None:
        part = ""
        try:
            while True:
                msg, fds = _recv(self.sock)
                if msg is None:
                    break
                op = msg.get("op")
                if op == "conn" and len(fds) == 1:
                    loop.call_soon_threadsafe(self._adopt, server, msg.get("name", ""), fds[0])
                    continue
                for fd in fds:
                    os.close(fd)
                if op == "stats":
                    part += msg.get("part", "")
                    if not msg.get("more"):
                        counters = json.loads(part) if part else {}
                        part = ""
                        loop.call_soon_threadsafe(self._counters, backend, counters)
                        if msg.get("final"):
                            break
        except (OSError, ValueError) as e:
            log.warning("hot restart: link to epoch %d lost: %s", self.epoch - 1, e)
        finally:
            self.sock.close()
            self.done.set()
            log.info("hot restart: epoch %d is done", self.epoch - 1)

    def _adopt(self, server: Any, name: str, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        if server.adopt(name, sock):
            server.stats.counter("server.hot_restart.connections_adopted").value += 1
        else:
            sock.close()

    def _counters(self, backend: Any, counters: dict[str, int]) -> None:
        backend.inherited = {"counters": counters, "gauges": {}, "histograms": {}, "used": set()}


class Successor:
    """Every serving process's side: the abstract socket its successor (epoch + 1) asks."""

    def __init__(self, base_id: int, epoch: int, server: Any, admin: Any, state: Any) -> None:
        self.epoch = epoch
        self.server = server
        self.admin = admin
        self.state = state
        self.shutdown_after = float(getattr(state.options, "parent_shutdown_time_s", 900))
        self.link: socket.socket | None = None
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(address(base_id, epoch))
        self.lsock.listen(1)
        self.loop = asyncio.get_running_loop()
        self.handed_over = 0
        threading.Thread(target=self._accept, name="hot-restart", daemon=True).start()

    @classmethod
    def serve(cls, opts: Any, server: Any, admin: Any, state: Any) -> Successor | None:
        try:
            return cls(int(opts.base_id), int(opts.restart_epoch), server, admin, state)
        except OSError as e:  # another process of this base id and epoch: say so, go on
            log.info(
                "hot restart: cannot listen for a successor (base id %s, epoch %s: %s); "
                "give each sofamesh its own --base-id to hot-restart it",
                opts.base_id,
                opts.restart_epoch,
                e,
            )
            return None

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            try:
                msg, fds = _recv(conn)
                for fd in fds:
                    os.close(fd)
                if msg is None or msg.get("op") != "hello":
                    conn.close()
                    continue
                names, socks = asyncio.run_coroutine_threadsafe(
                    self._listening(), self.loop
                ).result(10)
                _send(conn, {"op": "sockets", "names": names}, [s.fileno() for s in socks])
                msg, fds = _recv(conn)
                for fd in fds:
                    os.close(fd)
                if msg is None or msg.get("op") != "drain":
                    conn.close()  # the successor gave up: keep serving
                    continue
            except (OSError, ValueError, TimeoutError) as e:
                log.warning("hot restart: successor link failed: %s", e)
                conn.close()
                continue
            self.link = conn
            self.lsock.close()
            asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
            return

    async def _listening(self) -> tuple[list[str], list[Any]]:
        names: list[str] = []
        socks: list[Any] = []
        dyn = getattr(self.server, "dynamic", None)
        servers = [(li.name, li.server) for li in self.server.listeners]
        servers += [
            (n, dl.server) for n, dl in (getattr(dyn, "active_listeners", None) or {}).items()
        ]
        for name, srv in servers:  # (an LDS listener is in both lists)
            for s in getattr(srv, "sockets", None) or ():
                if name not in names:
                    names.append(name)
                    socks.append(s)
                break
        if self.admin is not None and self.admin.server is not None:
            names.append("admin")
            socks.append(self.admin.server.sockets[0])
        return names, socks

    async def _drain(self) -> None:
        """Stop accepting, hand over or drain every connection, report, exit."""
        from sofamesh._core.hcm_config import HcmConfig
        from sofamesh._core.rpc_proxy import RpcProxyConfig

        log.info("hot restart: epoch %d takes over; draining into it", self.epoch + 1)
        if self.admin is not None and self.admin.server is not None:
            self.admin.server.close()
        movable: list[tuple[str, Any]] = []  # listeners whose connections move whole
        others = []
        for li in self.server.listeners:
            parts = [li.hcm] if isinstance(li.hcm, HcmConfig) else getattr(li.hcm, "parts", [])
            if parts and all(isinstance(p, (HcmConfig, RpcProxyConfig)) for p in parts):
                li.draining = True
                if li.server is not None:
                    li.server.close()
                for p in parts:
                    if isinstance(p, HcmConfig):  # handed over as its responses end
                        p.hand_over = self._hand_over_cb(li.name)
                    movable.append((li.name, p))
            else:
                others.append(li)
        if others:  # TLS, several chains, tcp_proxy: closed once done, never mid-request
            saved = self.server.listeners
            self.server.listeners = others
            try:
                await self.server.drain_listeners(graceful=True)
            finally:
                self.server.listeners = saved
        dyn = getattr(self.server, "dynamic", None)
        if dyn is not None:
            for dl in getattr(dyn, "active_listeners", {}).values():
                dl.server.close()
        scans = [(self._hand_over_cb(name), view) for name, view in movable]
        deadline = time.monotonic() + self.shutdown_after
        last_stats = 0.0
        while True:
            # idle connections, those whose response ended inside a read, RPC connections
            # once their calls are answered; HTTP/2 ones get GOAWAY (closed once done)
            for cb, view in scans:
                for c in list(view.conns):
                    if hasattr(c, "hand_over"):
                        cb(c)
                    else:
                        c.close()
            now = time.monotonic()
            if self._open_connections() == 0 or now > deadline:
                break
            if now - last_stats >= STATS_EVERY_S:
                last_stats = now
                self._stats(final=False)
            await asyncio.sleep(0.02)
        self._stats(final=True)
        log.info("hot restart: drained (%d connections handed over); exiting", self.handed_over)
        if self.link is not None:
            self.link.close()
        self.state.quit.set()

    def _hand_over_cb(self, name: str) -> Any:
        def cb(conn: Any) -> None:
            if self.link is None:
                return
            fd = conn.hand_over()
            if fd is None:
                return
            try:
                _send(self.link, {"op": "conn", "name": name}, [fd])
            except OSError as e:  # the successor went away: we keep serving it
                log.error("hot restart: handing a connection over failed: %s", e)
                self.link = None
                return
            finally:
                os.close(fd)
            conn.handed_over()
            self.handed_over += 1
            self.server.stats.counter("server.hot_restart.connections_handed_over").value += 1

        return cb

    def _open_connections(self) -> int:
        """Connections still here: the listeners' own sets, or their cx_active gauges."""
        held = sum(len(li.hcm.conns) for li in self.server.listeners if hasattr(li.hcm, "conns"))
        return max(held, self._active_gauges())

    def _active_gauges(self) -> int:
        n = 0
        for name, g in self.server.stats.gauges().items():
            if (
                name.startswith("listener.")
                and name.endswith(".downstream_cx_active")
                and ".worker_" not in name
                and not name.startswith("listener.admin.")
            ):
                n += g.value
        return n

    def _stats(self, final: bool) -> None:
        if self.link is None:
            return
        try:
            _send_stats(self.link, self.server.stats.snapshot(), final)
        except OSError as e:
            log.warning("hot restart: sending counters failed: %s", e)
