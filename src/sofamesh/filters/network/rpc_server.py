"""Server with network filters: sofamesh.proxy.server.Server plus listeners whose filter chain
holds dubbo_proxy / bolt_proxy / tcp_proxy, and protocol sniffing (MOSN's Auto).

The base Server accepts only an http_connection_manager chain; until it grows a network
filter hook, this subclass is that hook (select it with
SOFAMESH_SERVER_FACTORY=sofamesh.filters.network.rpc_server:Server). It overrides the
smallest piece, `_start_listener`, and hands HCM-only chains back to the base class.

Sniffing: a chain that lists more than one terminal filter (e.g. http_connection_manager,
dubbo_proxy and bolt_proxy) is one listener carrying all of them; each connection is
handed to the filter its first bytes name: 0xdabb Dubbo, 0x01/0x02 Bolt, anything else
HTTP/1.1 (or the chain's tcp_proxy, if it has no HCM).
"""

from __future__ import annotations

import logging
from typing import Any

from sofamesh.proxy import server as base
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.proxy")


class _Chain:
    """The `hcm`-shaped view the base Server's drain/stop code uses: draining, conns."""

    def __init__(self, parts: list[Any]):
        self.parts = parts

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


class _Sniffer:
    """Reads the first bytes, then hands the connection to the protocol they name."""

    __slots__ = ("inner", "routes", "transport")

    def __init__(self, routes: dict[str, Any]):
        self.routes = routes
        self.transport: Any = None
        self.inner: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:  # pragma: no cover - set_protocol moved us aside
            self.inner.data_received(data)
            return
        b0 = data[0]
        if b0 == 0xDA and (len(data) < 2 or data[1] == 0xBB) and "dubbo" in self.routes:
            kind = "dubbo"
        elif b0 in (1, 2) and "bolt" in self.routes:
            kind = "bolt"
        elif "http" in self.routes:
            kind = "http"
        elif "tcp" in self.routes:
            kind = "tcp"
        else:
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


def _is_hcm(f: Any) -> bool:
    return f.name in base.HCM_NAMES or f.typed_config.type_url == base.HCM_TYPE


async def start_network_listener(server: Any, li: int, lst: Any, reuse_port: bool) -> bool:
    """Starts listener `lst` if its chain holds network filters (alone or with an HCM, then
    sniffed); False for an HCM-only chain, left to the base Server. The hook for
    sofamesh.proxy.server.Server._start_listener: `if await start_network_listener(self, li,
    lst, reuse_port): return`, and `view.close_all()` for `server.network_chains` in stop()."""
    from envoy.config.core.v3 import base_pb2

    from sofamesh.filters import registry

    chains = lst.filter_chains
    if len(chains) != 1 or all(_is_hcm(f) for f in chains[0].filters):
        return False
    path = f"static_resources.listeners[{li}]"
    sa = lst.address.socket_address
    if not sa.address:
        raise UnsupportedConfig(f"{path}.address: only socket addresses are supported")
    chain = chains[0]
    if chain.HasField("filter_chain_match") or chain.HasField("transport_socket"):
        raise UnsupportedConfig(
            f"{path}.filter_chains[0]: filter_chain_match and transport_socket are not supported"
        )
    stat_name = lst.stat_prefix or f"{sa.address}_{sa.port_value}"
    routes: dict[str, Any] = {}
    parts: list[Any] = []
    for fi, f in enumerate(chain.filters):
        fpath = f"{path}.filter_chains[0].filters[{fi}]"
        built: Any
        if _is_hcm(f):
            built = server._build_hcm(li, lst, fi, f, stat_name)
            kind = "http"
        else:
            spec = registry.lookup("network", f.typed_config.type_url) or registry.lookup(
                "network", f.name
            )
            if spec is None or not spec.extra.get("terminal"):
                raise UnsupportedConfig(f"{fpath}: network filter {f.name!r} is not supported")
            built = spec.factory(
                f.typed_config,
                {
                    "stats": server.stats,
                    "loop": server._loop,
                    "clusters": server.clusters,
                    "path": fpath,
                },
            )
            kind = spec.extra.get("sniff", "tcp")
        if kind in routes:
            raise UnsupportedConfig(f"{fpath}: a second {kind} filter in one chain")
        routes[kind] = built.protocol_factory
        parts.append(built)
    if len(parts) == 1:
        factory = parts[0].protocol_factory
    else:

        def factory() -> _Sniffer:
            return _Sniffer(routes)

    srv = await server._loop.create_server(
        factory,
        sa.address,
        sa.port_value,
        reuse_port=reuse_port or None,
        backlog=1024,
        reuse_address=True,
    )
    bound = srv.sockets[0].getsockname()
    view = _Chain(parts)
    if not hasattr(server, "network_chains"):
        server.network_chains = []
    server.network_chains.append(view)
    server.listeners.append(
        base.ListenerInfo(
            name=lst.name or f"{sa.address}_{sa.port_value}",
            address=(bound[0], bound[1]),
            config=lst,
            hcm=view,
            server=srv,
            direction=base_pb2.TrafficDirection.Name(lst.traffic_direction),
        )
    )
    g = server.stats.gauge("listener_manager.total_listeners_active")
    g.value = len(server.listeners)
    g.used = True
    return True


class Server(base.Server):
    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.network_chains: list[_Chain] = []

    async def _start_listener(self, li: int, lst: Any, reuse_port: bool) -> None:
        if not await start_network_listener(self, li, lst, reuse_port):
            await super()._start_listener(li, lst, reuse_port)

    async def stop(self) -> None:
        for view in self.network_chains:
            view.close_all()
        await super().stop()
