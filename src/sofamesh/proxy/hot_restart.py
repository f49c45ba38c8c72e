"""Hot restart: `sofamesh proxy --restart-epoch N` takes over from the sofamesh running as epoch
N-1 (same `--base-id`) and loses nothing: no connection attempt refused or reset, no request
failed, and the plain HTTP/1.1, Dubbo, Bolt and tcp_proxy connections the old process held
move to the new one whole. Any `--concurrency` on either side: 1 -> 1, 2 -> 2, 1 -> 4, 4 -> 2, ...

Two kinds of abstract Unix sockets (SOCK_SEQPACKET: one message a frame, file descriptors
attached with SCM_RIGHTS) per serving epoch:

- the **main** one, `@sofamesh_hot_restart.<base id>.<epoch>`, served by the process that
  holds the admin API (the only process with `--concurrency 1`, the main process of a pool):
  it hands over the admin's listening socket and says how many servers the epoch runs and
  on which ports its port-0 listeners are; told to drain, it drains its servers, sends its
  counters every second and a last time, and exits;
- one **server** socket per Server, `...<epoch>.w<j>` (j = 0 with `--concurrency 1`, else
  the worker's index), served by the process that runs it: it hands over that Server's
  listening sockets by listener name, then, told to drain, every connection it can move.

The new epoch:

1. before it binds anything, asks the old main socket for the admin socket, then has each
   of its servers take the listening sockets of old servers: new server i takes those of
   old servers j with j % N == i (N: the new concurrency), so every old socket, and the
   connections waiting in its kernel accept queue, is served on without a gap. A new
   server with no old one of its own (more servers than before) binds a fresh SO_REUSEPORT
   socket beside them, or, when the old socket does not allow that (`--concurrency 1`
   binds without SO_REUSEPORT), accepts on a shared copy of old server i % K's;
2. once it is LIVE, tells the old servers, then the old main, to drain:
   - the old servers stop accepting (they close their copies of the listening sockets);
   - plain HTTP/1.1 connections are handed over as soon as they are between requests
     (at once if idle, else when their response is done): the descriptor goes to the new
     server with the listener's name, the old one drops its copy without a FIN, and the
     new server serves the connection from its next byte, which waited in the kernel;
   - plain Dubbo and Bolt connections stop being read at a frame boundary, and move once
     the calls in flight are answered (what the client sent meanwhile waits in the kernel);
   - plain tcp_proxy connections move with their upstream connection: both stop being
     read, and once both have written everything the two descriptors go together (the
     new server pipes them on, from the next byte either way, without connecting again);
   - HTTP/2 connections get GOAWAY, and everything else (TLS, half-closed tcp_proxy
     connections, chains with connection_limit or RBAC in front) drains as
     `/drain_listeners?graceful` does: closed once done, never mid-request;
3. the old main sends its counters (all its servers', and what it inherited itself) every
   second while draining and a last time as it exits (its servers drained, or
   `--parent-shutdown-time-s` passed); the new main adds them to its own (`/stats`), as
   Envoy's child adds its parent's.

A server that took several sockets for one listener serves the first as its listener and
accepts on the others itself (`_serve_extra`); all of them go on to the next epoch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("sofamesh.hot_restart")

VERSION = "sofamesh.1"  # of this protocol: `--hot-restart-version`, /server_info
MAX_MSG = 60_000  # bytes of JSON a frame (SOCK_SEQPACKET keeps each one whole)
MAX_FDS = 64  # descriptors a frame
STATS_EVERY_S = 1.0

# what this process inherited: name -> listening sockets, taken as the listeners start
_inherited: dict[str, list[socket.socket]] = {}
# extra listening sockets this process accepts on itself: (name, socket, accept task)
_extra: list[tuple[str, socket.socket, asyncio.Task]] = []


def address(base_id: int, epoch: int, server: int | None = None) -> str:
    tail = "" if server is None else f".w{server}"
    return f"\0sofamesh_hot_restart.{base_id}.{epoch}{tail}"


def take(name: str) -> socket.socket | None:
    """The (first) listening socket named `name` handed over by the previous epoch, if any."""
    socks = _inherited.get(name)
    if not socks:
        return None
    sock = socks.pop(0)
    if not socks:
        del _inherited[name]
    return sock


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


def _send(sock: socket.socket, msg: dict, fds: Iterable[int] = ()) -> None:
    data = json.dumps(msg, separators=(",", ":")).encode()
    fds = list(fds)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG + 4096, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _ask(addr: str, hello: dict, timeout: float) -> tuple[socket.socket, dict, list[int]]:
    """Connects to `addr`, says hello, returns the link and the "sockets" answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
        _send(sock, hello)
        msg, fds = _recv(sock)
    except (OSError, ValueError):
        sock.close()
        raise
    if msg is None or msg.get("op") != "sockets" or len(msg.get("names", ())) != len(fds):
        _close_fds(fds)
        sock.close()
        raise ValueError(f"unexpected answer {msg!r}")
    sock.settimeout(None)
    return sock, msg, fds


def _adopt_sockets(names: list[str], fds: list[int]) -> None:
    for name, fd in zip(names, fds):
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        _inherited.setdefault(name, []).append(s)


# ---- the new epoch ---------------------------------------------------------------------


class Predecessor:
    """The new main's link to the old main (None from `connect` when it does not answer)."""

    def __init__(self, sock: socket.socket, epoch: int, msg: dict) -> None:
        self.sock = sock
        self.epoch = epoch
        self.servers = int(msg.get("servers", 1))  # K: how many servers the old epoch runs
        self.ports: dict[str, int] = msg.get("ports", {})  # port-0 listeners' real ports
        self.pid = int(msg.get("pid", 0))
        self.started_all = float(msg.get("started_all") or time.time())  # the first epoch's
        self.done = threading.Event()

    @classmethod
    def connect(cls, base_id: int, epoch: int, timeout: float = 5.0) -> Predecessor | None:
        """Asks epoch-1's main for the admin socket (filling `take`'s table)."""
        try:
            sock, msg, fds = _ask(address(base_id, epoch - 1), {"op": "hello"}, timeout)
        except (OSError, ValueError) as e:
            log.warning(
                "hot restart: epoch %d (base id %d) did not answer (%s): starting fresh",
                epoch - 1,
                base_id,
                e,
            )
            return None
        _adopt_sockets(msg["names"], fds)
        return cls(sock, epoch, msg)

    def plan(self, server: int, servers: int) -> dict:
        """What new server `server` of `servers` takes: the old servers it succeeds, or, with
        none of its own, the one whose sockets it may share."""
        primaries = [j for j in range(self.servers) if j % servers == server]
        share = None if primaries or not self.servers else server % self.servers
        return {"primaries": primaries, "share": share, "pid": self.pid}

    def drain(self, backend: Any) -> None:
        """Once LIVE (and the servers told theirs): the old main drains and exits; a thread
        reads the counters it sends until its last."""
        loop = asyncio.get_running_loop()
        _send(self.sock, {"op": "drain"})
        threading.Thread(target=self._read, args=(loop, backend), daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop, backend: Any) -> None:
        part = ""
        try:
            while True:
                msg, fds = _recv(self.sock)
                _close_fds(fds)
                if msg is None:
                    break
                if msg.get("op") == "stats":
                    part += msg.get("part", "")
                    if not msg.get("more"):
                        counters = json.loads(part) if part else {}
                        part = ""
                        loop.call_soon_threadsafe(_set_inherited, backend, counters)
                        if msg.get("final"):
                            break
        except (OSError, ValueError) as e:
            log.warning("hot restart: link to epoch %d lost: %s", self.epoch - 1, e)
        finally:
            self.sock.close()
            self.done.set()
            log.info("hot restart: epoch %d is done", self.epoch - 1)


def _set_inherited(backend: Any, counters: dict[str, int]) -> None:
    backend.inherited = {"counters": counters, "gauges": {}, "histograms": {}, "used": set()}


class ServerPredecessor:
    """A new server's link to one old server it succeeds."""

    def __init__(self, sock: socket.socket, epoch: int, index: int) -> None:
        self.sock = sock
        self.epoch = epoch
        self.index = index

    def drain(self, loop: asyncio.AbstractEventLoop, server: Any) -> None:
        _send(self.sock, {"op": "drain"})
        threading.Thread(target=self._read, args=(loop, server), daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop, server: Any) -> None:
        try:
            while True:
                msg, fds = _recv(self.sock)
                if msg is None:
                    break
                if msg.get("op") == "conn" and len(fds) == 1:
                    loop.call_soon_threadsafe(_adopt, server, msg.get("name", ""), fds[0])
                    continue
                if msg.get("op") == "tcp" and len(fds) == 2:
                    loop.call_soon_threadsafe(_adopt_tcp, server, msg, fds[0], fds[1])
                    continue
                _close_fds(fds)
                if msg.get("op") == "done":
                    break
        except (OSError, ValueError) as e:
            log.warning("hot restart: link to epoch %d's server %d lost: %s",
                        self.epoch - 1, self.index, e)  # fmt: skip
        finally:
            self.sock.close()


def _adopt(server: Any, name: str, fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    if server.adopt(name, sock):
        server.stats.counter("server.hot_restart.connections_adopted").value += 1
    else:
        sock.close()


def _adopt_tcp(server: Any, msg: dict, ds_fd: int, up_fd: int) -> None:
    ds, up = socket.socket(fileno=ds_fd), socket.socket(fileno=up_fd)
    ds.setblocking(False)
    up.setblocking(False)
    host = tuple(msg.get("host") or ("", 0))
    if server.adopt_tcp(msg.get("name", ""), ds, up, msg.get("cluster", ""), host):
        server.stats.counter("server.hot_restart.connections_adopted").value += 1


def take_servers(base_id: int, epoch: int, plan: dict) -> list[ServerPredecessor]:
    """Before the new server binds anything: the listening sockets of the old servers in
    `plan` (from `Predecessor.plan`) into `take`'s table, and the links they drain over."""
    links = []
    taken: list[str] = []
    for j in plan.get("primaries", ()):
        try:
            sock, msg, fds = _ask(address(base_id, epoch - 1, j), {"op": "hello"}, 5.0)
        except (OSError, ValueError) as e:
            log.warning("hot restart: epoch %d's server %d did not answer (%s)", epoch - 1, j, e)
            continue
        if plan.get("pid") and msg.get("main") != plan["pid"]:
            _close_fds(fds)
            sock.close()
            log.warning("hot restart: %s belongs to another sofamesh (main %s, not %s): "
                        "give each its own --base-id", address(base_id, epoch - 1, j)[1:],
                        msg.get("main"), plan["pid"])  # fmt: skip
            continue
        _adopt_sockets(msg["names"], fds)
        taken += msg["names"]
        links.append(ServerPredecessor(sock, epoch, j))
    share = plan.get("share")
    if share is not None:
        taken += _share(base_id, epoch, share, plan.get("pid"))
    log.info("hot restart: took %d listening sockets from epoch %d: %s",
             len(taken), epoch - 1, ", ".join(sorted(taken)))  # fmt: skip
    return links


def _share(base_id: int, epoch: int, j: int, pid: int | None) -> list[str]:
    """A new server with no old server of its own: per listener, a fresh SO_REUSEPORT socket
    on old server j's address, or, where that is refused, a copy of j's socket."""
    try:
        sock, msg, fds = _ask(address(base_id, epoch - 1, j), {"op": "hello", "share": True}, 5.0)
    except (OSError, ValueError) as e:
        log.warning("hot restart: epoch %d's server %d did not answer (%s)", epoch - 1, j, e)
        return []
    sock.close()
    if pid and msg.get("main") != pid:
        _close_fds(fds)
        return []
    for name, fd in zip(msg["names"], fds):
        old = socket.socket(fileno=fd)
        fresh = _fresh_beside(old)
        if fresh is not None:
            old.close()
        _adopt_sockets([name], [(fresh or old).detach()])
    return list(msg["names"])


def _fresh_beside(old: socket.socket) -> socket.socket | None:
    if old.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    s = socket.socket(old.family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(old.getsockname()[:2])
        s.listen(1024)
    except OSError:
        s.close()
        return None
    return s


def go_live(server: Any, links: list[ServerPredecessor]) -> None:
    """The new server is LIVE: its old servers drain into it; inherited sockets beyond the
    first of a listener are accepted on here; those of listeners this config no longer has
    close."""
    loop = asyncio.get_running_loop()
    names = {li.name for li in server.listeners if li.server is not None}
    for name, socks in list(_inherited.items()):
        del _inherited[name]
        for s in socks:
            if name in names:
                task = loop.create_task(_serve_extra(loop, server, name, s))
                _extra.append((name, s, task))
            else:
                log.info("hot restart: listener %s is not in this config: its socket closes",
                         name)  # fmt: skip
                s.close()
    for link in links:
        link.drain(loop, server)


async def _serve_extra(loop: Any, server: Any, name: str, lsock: socket.socket) -> None:
    while True:
        try:
            conn, _ = await loop.sock_accept(lsock)
        except asyncio.CancelledError:
            raise
        except OSError as e:
            if lsock.fileno() < 0:
                return
            log.warning("hot restart: accepting on %s: %s", name, e)
            await asyncio.sleep(0.1)
            continue
        conn.setblocking(False)
        if not server.adopt(name, conn):
            conn.close()


# ---- the old epoch ---------------------------------------------------------------------


def _expect(conn: socket.socket, op: str) -> dict | None:
    """The next message on `conn` if it is `op`; None (the link failed, or the successor
    gave up) otherwise."""
    try:
        msg, fds = _recv(conn)
        _close_fds(fds)
    except (OSError, ValueError) as e:
        log.warning("hot restart: successor link failed: %s", e)
        return None
    return msg if msg is not None and msg.get("op") == op else None


def _hellos(lsock: socket.socket) -> Iterator[tuple[socket.socket, dict]]:
    """Each connection to `lsock` that says hello, with its message (others are closed),
    until `lsock` closes."""
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        msg = _expect(conn, "hello")
        if msg is None:
            conn.close()
            continue
        yield conn, msg


def _endpoint(addr: str, what: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.bind(addr)
    except OSError as e:  # another process of this base id and epoch: say so, go on
        s.close()
        log.info("hot restart: cannot listen for a successor's %s on %s (%s); give each "
                 "sofamesh its own --base-id to hot-restart it", what, addr[1:], e)  # fmt: skip
        return None
    s.listen(4)
    return s


class ServerSuccessor:
    """A serving Server's side: the socket its successors ask for its listening sockets and
    drain it over. `start_drain` (from the link or from its main) drains it once;
    `on_drained` is called when it holds no connection any more."""

    def __init__(
        self, lsock: socket.socket, server: Any, opts: Any, main_pid: int, on_drained: Callable
    ) -> None:
        self.lsock = lsock
        self.server = server
        self.main_pid = main_pid
        self.on_drained = on_drained
        self.shutdown_after = float(getattr(opts, "parent_shutdown_time_s", 900))
        self.link: socket.socket | None = None
        self.loop = asyncio.get_running_loop()
        self.handed_over = 0
        self.draining = False
        threading.Thread(target=self._accept, name="hot-restart", daemon=True).start()

    @classmethod
    def serve(cls, opts: Any, server: Any, index: int, main_pid: int, on_drained: Callable) -> Any:
        lsock = _endpoint(address(int(opts.base_id), int(opts.restart_epoch), index), "server")
        return None if lsock is None else cls(lsock, server, opts, main_pid, on_drained)

    def _accept(self) -> None:
        for conn, msg in _hellos(self.lsock):
            try:
                names, socks = asyncio.run_coroutine_threadsafe(
                    self._listening(), self.loop
                ).result(10)
                answer = {"op": "sockets", "names": names, "main": self.main_pid}
                _send(conn, answer, [s.fileno() for s in socks])
            except (OSError, ValueError, TimeoutError) as e:
                log.warning("hot restart: successor link failed: %s", e)
                conn.close()
                continue
            if msg.get("share"):  # a new server that only shares these sockets
                conn.close()
            else:  # the one that succeeds this server: it says when to drain
                threading.Thread(target=self._await_drain, args=(conn,), daemon=True).start()

    def _await_drain(self, conn: socket.socket) -> None:
        if _expect(conn, "drain") is None or self.link is not None:
            conn.close()  # the successor gave up: keep serving
            return
        self.link = conn
        self.loop.call_soon_threadsafe(self.start_drain)

    async def _listening(self) -> tuple[list[str], list[Any]]:
        names: list[str] = []
        socks: list[Any] = []
        seen: set[int] = set()
        dyn = getattr(self.server, "dynamic", None)
        servers = [(li.name, li.server) for li in self.server.listeners]
        servers += [
            (n, dl.server) for n, dl in (getattr(dyn, "active_listeners", None) or {}).items()
        ]
        for name, srv in servers:  # (an LDS listener is in both lists)
            for s in getattr(srv, "sockets", None) or ():
                if s.fileno() not in seen:
                    seen.add(s.fileno())
                    names.append(name)
                    socks.append(s)
        for name, s, _task in _extra:
            if s.fileno() >= 0 and s.fileno() not in seen:
                seen.add(s.fileno())
                names.append(name)
                socks.append(s)
        return names, socks

    def start_drain(self) -> None:
        if not self.draining:
            self.draining = True
            try:
                self.lsock.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread)
            except OSError:
                pass
            self.lsock.close()
            self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Stop accepting, hand over or drain every connection, say so."""
        from sofamesh._core.hcm_config import HcmConfig
        from sofamesh._core.rpc_proxy import RpcProxyConfig
        from sofamesh._core.rpc_tcp import TcpProxyConfig

        log.info("hot restart: the next epoch takes over; draining into it")
        for _name, s, task in _extra:
            task.cancel()
            s.close()
        _extra.clear()
        movable: list[tuple[str, Any]] = []  # listeners whose connections move whole
        others = []
        for li in self.server.listeners:
            parts = [li.hcm] if isinstance(li.hcm, HcmConfig) else getattr(li.hcm, "parts", [])
            kinds = (HcmConfig, RpcProxyConfig, TcpProxyConfig)
            if (
                parts
                and all(isinstance(p, kinds) for p in parts)
                and not getattr(li.hcm, "gates", None)  # (connection_limit, rbac: drained)
                # an internal listener's connection is one end of an in-process socket pair
                # (proxy/internal_listener.py): it stays, with its other end, and drains
                and not li.config.HasField("internal_listener")
            ):
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
        scans = [
            (self._tcp_cb(name) if isinstance(view, TcpProxyConfig) else self._hand_over_cb(name),
             view)
            for name, view in movable
        ]  # fmt: skip
        deadline = time.monotonic() + self.shutdown_after
        while True:
            # idle connections, those whose response ended inside a read, RPC connections
            # once their calls are answered; HTTP/2 ones get GOAWAY (closed once done)
            for cb, view in scans:
                for c in list(view.conns):
                    if hasattr(c, "hand_over"):
                        cb(c)
                    else:
                        c.close()
            if self._open_connections() == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        log.info("hot restart: drained (%d connections handed over)", self.handed_over)
        if self.link is not None:
            try:
                _send(self.link, {"op": "done"})
            except OSError:
                pass
            self.link.close()
            self.link = None
        self.on_drained()

    def _hand_over_cb(self, name: str) -> Any:
        """HTTP/1.1, Dubbo, Bolt: the connection's descriptor moves."""

        def cb(conn: Any) -> None:
            if self.link is not None and (fd := conn.hand_over()) is not None:
                self._send_conn(conn, {"op": "conn", "name": name}, [fd])

        return cb

    def _tcp_cb(self, name: str) -> Any:
        """tcp_proxy: the connection and its upstream connection move together."""

        def cb(conn: Any) -> None:
            if self.link is not None and (got := conn.hand_over()) is not None:
                ds_fd, up_fd, cluster, host = got
                msg = {"op": "tcp", "name": name, "cluster": cluster, "host": list(host)}
                self._send_conn(conn, msg, [ds_fd, up_fd])

        return cb

    def _send_conn(self, conn: Any, msg: dict, fds: list[int]) -> None:
        """`fds` (duplicates, closed here) to the successor; then `conn` lets go of them."""
        assert self.link is not None
        try:
            _send(self.link, msg, fds)
        except OSError as e:  # the successor went away: we keep serving it
            log.error("hot restart: handing a connection over failed: %s", e)
            self.link = None
            return
        finally:
            _close_fds(fds)
        conn.handed_over()
        self.handed_over += 1
        self.server.stats.counter("server.hot_restart.connections_handed_over").value += 1

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


class Successor:
    """The main's side (the process with the admin API): the socket its successor's main
    asks for the admin socket and the epoch's shape, then tells to drain. `drain_servers`
    starts its servers' drain; `drained()` says they are done; `backend.snapshot()` gives
    the counters to send."""

    def __init__(
        self,
        lsock: socket.socket,
        opts: Any,
        admin: Any,
        state: Any,
        backend: Any,
        shape: dict,
        drain_servers: Callable,
        drained: Callable[[], bool],
    ) -> None:
        self.lsock = lsock
        self.admin = admin
        self.state = state
        self.backend = backend
        self.shape = shape  # {"servers": K, "ports": {...}}
        self.drain_servers = drain_servers
        self.drained = drained
        self.shutdown_after = float(getattr(opts, "parent_shutdown_time_s", 900))
        self.epoch = int(opts.restart_epoch)
        self.link: socket.socket | None = None
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self._accept, name="hot-restart", daemon=True).start()

    @classmethod
    def serve(cls, opts: Any, admin: Any, state: Any, backend: Any, shape: dict,
              drain_servers: Callable, drained: Callable[[], bool]) -> Successor | None:  # fmt: skip
        lsock = _endpoint(address(int(opts.base_id), int(opts.restart_epoch)), "main")
        if lsock is None:
            return None
        return cls(lsock, opts, admin, state, backend, shape, drain_servers, drained)

    def _accept(self) -> None:
        for conn, _msg in _hellos(self.lsock):
            try:
                socks = []
                if self.admin is not None and self.admin.server is not None:
                    socks = [self.admin.server.sockets[0]]
                answer = {"op": "sockets", "names": ["admin"] * len(socks), "pid": os.getpid(),
                          **self.shape}  # fmt: skip
                _send(conn, answer, [s.fileno() for s in socks])
            except OSError as e:
                log.warning("hot restart: successor link failed: %s", e)
                conn.close()
                continue
            if _expect(conn, "drain") is None:
                conn.close()  # the successor gave up: keep serving
                continue
            self.link = conn
            self.lsock.close()
            asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
            return

    async def _drain(self) -> None:
        log.info("hot restart: epoch %d takes over; draining into it", self.epoch + 1)
        if self.admin is not None and self.admin.server is not None:
            self.admin.server.close()
        await self.drain_servers()
        deadline = time.monotonic() + self.shutdown_after
        last_stats = time.monotonic()
        while not self.drained() and time.monotonic() < deadline:
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                await self._stats(final=False)
            await asyncio.sleep(0.02)
        await self._stats(final=True)
        log.info("hot restart: drained; exiting")
        if self.link is not None:
            self.link.close()
        self.state.quit.set()

    async def _stats(self, final: bool) -> None:
        if self.link is None:
            return
        snap = await self.backend.snapshot()
        body = json.dumps({k: v for k, v in snap["counters"].items() if v})
        parts = [body[i : i + MAX_MSG] for i in range(0, len(body), MAX_MSG)] or [""]
        try:
            for i, part in enumerate(parts):
                more = i < len(parts) - 1
                _send(self.link, {"op": "stats", "part": part, "more": more, "final": final})
        except OSError as e:
            log.warning("hot restart: sending counters failed: %s", e)


# ---- wiring into proxy/workers.py ---------------------------------------------------


async def predecessor(opts: Any) -> Any:
    """Hot restart: the link to the previous epoch's main process (None when there is none
    to take over from); the servers' links come after, per server (`take_servers`)."""
    if opts.restart_epoch > 0 and not opts.disable_hot_restart and opts.mode == "serve":
        return await asyncio.to_thread(Predecessor.connect, opts.base_id, opts.restart_epoch)
    return None


def _port0(listeners: Any) -> dict[str, int]:
    """Hot restart: the real ports of listeners configured with port 0, by name (the next
    epoch binds the same ones). `listeners`: (name, configured port, bound port)."""
    return {name: bound for name, conf, bound in listeners if name and conf == 0 and bound}


def serve_single(opts: Any, server: Any, admin: Any, state: Any, backend: Any) -> None:
    """`--concurrency 1`: this process is both the main and the one server its successor
    asks (proxy/hot_restart.py)."""
    done = asyncio.Event()
    srv = ServerSuccessor.serve(opts, server, 0, os.getpid(), done.set)
    if srv is None:
        return

    async def drain_servers() -> None:
        srv.start_drain()

    ports = _port0(
        (li.name, li.config.address.socket_address.port_value, li.address[1])
        for li in server.listeners
    )
    shape = {"servers": 1, "ports": ports, "started_all": state.started_all}
    Successor.serve(opts, admin, state, backend, shape, drain_servers, done.is_set)


def serve_pool(
    opts: Any,
    wb: Any,
    pool: list,
    admin: Any,
    state: Any,
    backend: Any,
    draining: set[int],
    drained: set[int],
) -> None:
    """The pool's main side of hot restart: each worker serves its own server socket; told
    to drain, the main stops restarting workers and has each drain."""

    async def drain_servers() -> None:
        draining.update(w.index for w in pool)
        res = await asyncio.gather(*(w.request("hr_drain") for w in pool), return_exceptions=True)
        for w, r in zip(pool, res):
            if not isinstance(r, dict) or r.get("drained"):  # gone, or nothing to hand over
                drained.add(w.index)

    def done() -> bool:
        return all(w.index in drained or not w.alive() for w in pool)

    ports = _port0(
        (bound.name, conf.address.socket_address.port_value, bound.address.socket_address.port_value)
        for bound, conf in zip(wb.static_resources.listeners, state.bootstrap.static_resources.listeners)
    )  # fmt: skip
    shape = {"servers": len(pool), "ports": ports, "started_all": state.started_all}
    Successor.serve(opts, admin, state, backend, shape, drain_servers, done)
