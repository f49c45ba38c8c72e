"""A minimal Server honouring the contract of docs/ARCHITECTURE.md, for testing admin and
workers apart from the data plane: binds the bootstrap's listeners (SO_REUSEPORT), answers
every HTTP request `200 <pid>` and counts it as the data plane does
(`http.<stat_prefix>.downstream_rq_total`, `..._2xx`, `listener.<addr>.downstream_cx_total`)."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from sofamesh.config import protos


@dataclass
class ListenerInfo:
    name: str
    address: tuple[str, int]
    config: Any


@dataclass
class Host:
    address: str
    port: int
    weight: int = 1
    healthy: bool = True
    rq_total: int = 0


@dataclass
class ClusterInfo:
    name: str
    config: Any
    hosts: list[Host] = field(default_factory=list)


class ContractServer:
    def __init__(self, bootstrap: Any, stats: Any, options: Any) -> None:
        self.bootstrap = bootstrap
        self.stats = stats
        self.options = options
        self.listeners: list[ListenerInfo] = []
        self.clusters: dict[str, ClusterInfo] = {}
        self.health_failed = False
        self.drained = False
        self._servers: list[asyncio.base_events.Server] = []

    async def start(self) -> None:
        for c in self.bootstrap.static_resources.clusters:
            hosts = []
            for ep in c.load_assignment.endpoints:
                for lb in ep.lb_endpoints:
                    sa = lb.endpoint.address.socket_address
                    hosts.append(
                        Host(sa.address, sa.port_value, lb.load_balancing_weight.value or 1)
                    )
            self.clusters[c.name] = ClusterInfo(c.name, c, hosts)
        for lst in self.bootstrap.static_resources.listeners:
            sa = lst.address.socket_address
            prefix = "ingress"
            for chain in lst.filter_chains:
                for f in chain.filters:
                    hcm = protos.unpack_any(f.typed_config)
                    if hcm is not None and hasattr(hcm, "stat_prefix"):
                        prefix = hcm.stat_prefix
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.options.concurrency > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((sa.address, sa.port_value))
            host, port = sock.getsockname()[:2]
            srv = await asyncio.start_server(self._handler(prefix, f"{host}_{port}"), sock=sock)
            self._servers.append(srv)
            self.listeners.append(ListenerInfo(lst.name, (host, port), lst))

    def _handler(self, prefix: str, addr: str):
        st = self.stats

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            st.counter(f"listener.{addr}.downstream_cx_total").value += 1
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    for n in ("downstream_rq_total", "downstream_rq_2xx"):
                        c = st.counter(f"http.{prefix}.{n}")
                        c.value += 1
                        c.used = True
                    body = str(os.getpid()).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        return handle

    async def drain_listeners(self, inbound_only: bool = False, graceful: bool = False) -> None:
        self.drained = True
        for s in self._servers:
            s.close()

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
