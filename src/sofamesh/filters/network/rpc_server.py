"""Server with network filters: sofamesh.proxy.server.Server plus listeners whose filter chain
holds dubbo_proxy / bolt_proxy / tcp_proxy, and protocol sniffing (MOSN's Auto).

The base Server accepts only an http_connection_manager chain; until it grows a network
filter hook, this subclass is that hook (select it with
SOFAMESH_SERVER_FACTORY=sofamesh.filters.network.rpc_server:Server). It overrides the
smallest piece, `_start_listener`, and hands HCM-only chains back to the base class.

Sniffing: `sofamesh.filters.network.auto` (one terminal filter, so the chain is valid by
Envoy's rules) lists http_connection_manager, dubbo_proxy, bolt_proxy and/or tcp_proxy;
each connection goes to the one its first bytes name (sniff.py).
"""

from __future__ import annotations

import logging
from typing import Any

from sofamesh.filters.network.sniff import Chain
from sofamesh.proxy import server as base
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.proxy")


def _is_hcm(f: Any) -> bool:
    return f.name in base.HCM_NAMES or f.typed_config.type_url == base.HCM_TYPE


async def start_network_listener(server: Any, li: int, lst: Any, reuse_port: bool) -> bool:
    """Starts listener `lst` if its chain is one network filter (dubbo_proxy, bolt_proxy,
    tcp_proxy, or auto sniffing several); False for an HCM chain, left to the base Server.
    The hook for sofamesh.proxy.server.Server._start_listener: `if await
    start_network_listener(self, li, lst, reuse_port): return`, and `close_all()` on
    `server.network_chains` in stop()."""
    from envoy.config.core.v3 import base_pb2

    from sofamesh.filters import registry

    chains = lst.filter_chains
    if len(chains) != 1 or any(_is_hcm(f) for f in chains[0].filters):
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
    if len(chain.filters) != 1:
        raise UnsupportedConfig(
            f"{path}.filter_chains[0].filters: one terminal network filter per chain (list "
            "several under sofamesh.filters.network.auto to sniff the protocol)"
        )
    stat_name = lst.stat_prefix or f"{sa.address}_{sa.port_value}"
    fi = 0

    def build_terminal(f: Any, fpath: str) -> tuple[str, Any]:
        if _is_hcm(f):
            return "http", server._build_hcm(li, lst, fi, f, stat_name)
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
                "build_terminal": build_terminal,
            },
        )
        return spec.extra.get("sniff", "tcp"), built

    _, built = build_terminal(chain.filters[0], f"{path}.filter_chains[0].filters[0]")
    view = built if isinstance(built, Chain) else Chain([built])
    srv = await server._loop.create_server(
        view.protocol_factory,
        sa.address,
        sa.port_value,
        reuse_port=reuse_port or None,
        backlog=1024,
        reuse_address=True,
    )
    bound = srv.sockets[0].getsockname()
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
        self.network_chains: list[Chain] = []

    async def _start_listener(self, li: int, lst: Any, reuse_port: bool) -> None:
        if not await start_network_listener(self, li, lst, reuse_port):
            await super()._start_listener(li, lst, reuse_port)

    async def stop(self) -> None:
        for view in self.network_chains:
            view.close_all()
        await super().stop()
