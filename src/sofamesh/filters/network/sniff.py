"""Protocol sniffing (MOSN's Auto): hand a connection to the filter its first bytes name."""

from __future__ import annotations

from typing import Any


def kind_of(first: bytes, kinds: dict[str, Any]) -> str | None:
    """0xdabb -> dubbo, 0x01/0x02 -> bolt, else http (or tcp, when there is no HTTP)."""
    b0 = first[0]
    if b0 == 0xDA and (len(first) < 2 or first[1] == 0xBB) and "dubbo" in kinds:
        return "dubbo"
    if b0 in (1, 2) and "bolt" in kinds:
        return "bolt"
    if "http" in kinds:
        return "http"
    if "tcp" in kinds:
        return "tcp"
    return None


class Sniffer:
    """An asyncio Protocol that reads the first bytes, then moves the transport to the
    protocol they name (set_protocol) and replays those bytes to it."""

    __slots__ = ("inner", "routes", "transport")

    def __init__(self, routes: dict[str, Any]):
        self.routes = routes  # kind -> protocol factory
        self.transport: Any = None
        self.inner: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:  # pragma: no cover - set_protocol moved us aside
            self.inner.data_received(data)
            return
        kind = kind_of(data, self.routes)
        if kind is None:
            self.transport.close()
            return
        inner = self.routes[kind]()
        self.inner = inner
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        inner.data_received(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Any) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class Chain:
    """Several filter configs seen as one: what the Server's drain/stop code uses of an
    `hcm` (draining, conns), and the listener's protocol factory."""

    def __init__(self, parts: list[Any], routes: dict[str, Any] | None = None):
        self.parts = parts
        self.routes = routes
        # filters before the terminal one that check a connection first (network rbac):
        # each has `wrap(factory) -> factory`, the first listed sees the connection first
        self.gates: list[Any] = []
        self._gated: Any = None  # the gated factory, made on first use

    def protocol_factory(self) -> Any:
        if self.gates:
            if self._gated is None:
                make = self._inner_protocol
                for g in reversed(self.gates):
                    make = g.wrap(make)
                self._gated = make
            return self._gated()
        return self._inner_protocol()

    def _inner_protocol(self) -> Any:
        if self.routes is None:
            return self.parts[0].protocol_factory()
        return Sniffer(self.routes)

    @property
    def draining(self) -> bool:
        return all(p.draining for p in self.parts)

    @draining.setter
    def draining(self, v: bool) -> None:
        for p in self.parts:
            p.draining = v

    @property
    def conns(self) -> list:
        out: list = []
        for p in self.parts:
            out.extend(p.conns)
        return out

    def close_all(self) -> None:
        for p in self.parts:
            if hasattr(p, "close_all"):
                p.close_all()
