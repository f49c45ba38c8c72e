"""An emulated SOFARegistry session server: Bolt for clients, HTTP for discovery, on one port.

No SOFARegistry server installs here; this speaks the session server's client protocol
(`sofamesh.pilot.registries.sofa_wire`) well enough for the real sofa-registry-node SDK and
the pilot's adapter:

- Bolt (first byte 0x01/0x02): PublisherRegister / SubscriberRegister (REGISTER and
  UNREGISTER) answered with RegisterResponse echoing the register's version;
  SyncConfigRequest answered with the one segment (data center); heartbeats acked.
  Data is kept per dataInfoId (`dataId#@#instanceId#@#group`); when a dataInfoId's
  publishers change, and when a subscriber registers, each subscribing connection gets one
  `ReceivedData` ({zone: [DataBox]}, its registIds, a version that only grows), coalesced
  over `push_delay`. A connection's publishers and subscribers go when it closes, as the
  real session server drops a client's data with its channel.
- HTTP (anything else): `GET /api/servers/query` -> `host:port` (the Bolt address, here the
  same port), `/api/servers/query.json`, `/api/servers/alive`, and the session digest API's
  `GET /digest/getDataInfoIdList` (JSON list of dataInfoIds with publishers or subscribers).

Run it: `python -m tests.support.sofa_session_server 127.0.0.1:0` prints
`sofa-session-server ready 127.0.0.1:PORT` and serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter, defaultdict
from typing import Any, cast

from sofamesh.pilot.registries.sofa_conn import BoltPeer, CallError
from sofamesh.pilot.registries.sofa_wire import (
    DEFAULT_DATA_CENTER,
    DEFAULT_ZONE,
    Message,
    PublisherRegister,
    ReceivedData,
    RegisterResponse,
    SubscriberRegister,
    SyncConfigRequest,
    SyncConfigResponse,
    split_data_info_id,
)


class SessionServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_center: str = DEFAULT_DATA_CENTER,
        push_delay: float = 0.02,
    ) -> None:
        self.host = host
        self.port = port
        self.data_center = data_center
        self.push_delay = push_delay
        self.stats: Counter[str] = Counter()
        # dataInfoId -> registId -> (connection, register)
        self.publishers: dict[str, dict[str, tuple[BoltPeer, PublisherRegister]]] = defaultdict(
            dict
        )
        self.subscribers: dict[str, dict[str, tuple[BoltPeer, SubscriberRegister]]] = defaultdict(
            dict
        )
        self.versions: dict[str, int] = {}
        self.peers: set[BoltPeer] = set()
        self._dirty: set[str] = set()
        self._dirty_subs: dict[str, set[str]] = defaultdict(set)  # first pushes owed
        self._flush: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Sniffer(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for p in list(self.peers):
            p.close()
        if self._server is not None:
            await self._server.wait_closed()

    # ---------------------------------------------------------------- Bolt side

    def new_peer(self) -> BoltPeer:
        peer = BoltPeer(on_request=self._on_request, on_close=self._on_close, stats=self.stats)
        self.peers.add(peer)
        self.stats["connections"] += 1
        return peer

    def _on_request(self, peer: BoltPeer, msg: Message) -> Message | None:
        if isinstance(msg, PublisherRegister):
            self.stats["publisher_registers"] += 1
            return self._register(peer, msg, self.publishers, "Publisher")
        if isinstance(msg, SubscriberRegister):
            self.stats["subscriber_registers"] += 1
            resp = self._register(peer, msg, self.subscribers, "Subscriber")
            if not msg.unregister:
                self._dirty_subs[msg.key].add(msg.regist_id)
                self._schedule()
            return resp
        if isinstance(msg, SyncConfigRequest):
            return SyncConfigResponse(available_segments=[self.data_center], retry_interval=30000)
        self.stats["unexpected_requests"] += 1
        return None

    def _register(self, peer: BoltPeer, reg: Any, table: dict, kind: str) -> RegisterResponse:
        key = reg.key
        entries = table[key]
        old = entries.get(reg.regist_id)
        if old is not None and old[1].version > reg.version:
            # an older change arriving late: keep the newer one (the real server compares too)
            return RegisterResponse(True, reg.regist_id, reg.version, message="stale version")
        if reg.unregister:
            entries.pop(reg.regist_id, None)
            if not entries:
                table.pop(key, None)
        else:
            if reg.zone is None:
                reg.zone = DEFAULT_ZONE
            entries[reg.regist_id] = (peer, reg)
        if table is self.publishers:
            self._mark(key)
        verb = "unregister" if reg.unregister else "register"
        return RegisterResponse(True, reg.regist_id, reg.version, message=f"{kind} {verb} success!")

    def _on_close(self, peer: BoltPeer) -> None:
        self.peers.discard(peer)
        for table in (self.publishers, self.subscribers):
            for key in list(table):
                entries = table[key]
                gone = [r for r, (p, _) in entries.items() if p is peer]
                for r in gone:
                    del entries[r]
                if gone and table is self.publishers:
                    self._mark(key)
                if not entries:
                    del table[key]

    # ---------------------------------------------------------------- pushes

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.push_delay, self._push_dirty)

    def _push_dirty(self) -> None:
        self._flush = None
        dirty, self._dirty = self._dirty, set()
        owed, self._dirty_subs = self._dirty_subs, defaultdict(set)
        for key in dirty | set(owed):
            subs = self.subscribers.get(key)
            if not subs:
                continue
            if key in dirty:
                self.versions[key] = self.versions.get(key, 0) + 1
                targets = list(subs.items())
            else:  # only new subscribers want the current data
                targets = [(r, subs[r]) for r in owed[key] if r in subs]
            self.versions.setdefault(key, 1)
            self._push(key, targets)

    def _push(self, key: str, targets: list[tuple[str, tuple[BoltPeer, SubscriberRegister]]]):
        data_id, instance_id, group = split_data_info_id(key)
        zones: dict[str, list[str]] = {}
        for _, reg in self.publishers.get(key, {}).values():
            zones.setdefault(reg.zone or DEFAULT_ZONE, []).extend(reg.data_list)
        by_conn: dict[tuple[BoltPeer, str], list[str]] = defaultdict(list)
        for regist_id, (peer, sub) in targets:
            by_conn[(peer, sub.scope)].append(regist_id)
        for (peer, scope), ids in by_conn.items():
            msg = ReceivedData(
                data_id=data_id,
                group=group,
                instance_id=instance_id,
                subscriber_regist_ids=ids,
                data=zones,
                version=self.versions[key],
                segment=self.data_center,
                scope=scope,
                local_zone=next(iter(zones), DEFAULT_ZONE),
            )
            self.stats["pushes"] += 1
            fut = peer.push(msg)
            fut.add_done_callback(self._push_done)

    def _push_done(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, CallError):
            self.stats["push_errors"] += 1

    # ---------------------------------------------------------------- HTTP side

    def http_get(self, path: str) -> tuple[int, str, str]:
        route = path.split("?", 1)[0]
        addr = f"{self.host}:{self.port}"
        if route == "/api/servers/query":
            return 200, "text/plain", addr
        if route == "/api/servers/query.json":
            return 200, "application/json", json.dumps([addr])
        if route == "/api/servers/alive":
            return 200, "text/plain", "OK"
        if route == "/digest/getDataInfoIdList":
            ids = sorted(set(self.publishers) | set(self.subscribers))
            return 200, "application/json", json.dumps(ids)
        return 404, "text/plain", "not found"


class _Sniffer(asyncio.Protocol):
    """Looks at a connection's first byte: Bolt goes to a BoltPeer, anything else is HTTP."""

    def __init__(self, server: SessionServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.buf and data[:1] in (b"\x01", b"\x02"):
            peer = self.server.new_peer()
            self.transport.set_protocol(peer)
            peer.connection_made(self.transport)
            peer.data_received(data)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                self.transport.close()
            return
        line = self.buf.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] != "GET":
            status, ctype, body = 405, "text/plain", "GET only"
        else:
            status, ctype, body = self.server.http_get(line[1])
        raw = body.encode()
        self.transport.write(
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode()
            + raw
        )
        self.transport.close()


async def _main(hostport: str) -> None:
    host, _, port = hostport.rpartition(":")
    server = SessionServer(host or "127.0.0.1", int(port or 0))
    await server.start()
    print(f"sofa-session-server ready {server.host}:{server.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0"))
    except KeyboardInterrupt:
        pass
