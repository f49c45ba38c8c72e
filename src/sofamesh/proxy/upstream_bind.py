"""How a cluster dials its upstream connections' sockets (`Cluster.dialer`, a `Dialer`):

`Cluster.upstream_bind_config`, and the bootstrap's `cluster_manager.upstream_bind_config`
(the default of every cluster without its own): the local address an upstream connection is
bound to before it connects, as Envoy's BindConfig.

- `source_address`: the address (and port, 0: any) to bind. Istio's
  `InboundPassthroughClusterIpv4` binds 127.0.0.6, so that iptables tells the sidecar's own
  connections to its pod's address from the application's.
- `extra_source_addresses`: one more address of the other IP family; the connection binds the
  one of the upstream host's family (Envoy), `source_address` when none is.
- `freebind`: IP_FREEBIND (IPV6_FREEBIND) on the socket, so that an address the host does
  not (yet) have can be bound.
- `socket_options`, `local_address_selector` and the deprecated `additional_source_addresses`
  are refused by name (config/implemented.py).

`Cluster.upstream_connection_options.tcp_keepalive`: SO_KEEPALIVE on each upstream socket,
with TCP_KEEPCNT / TCP_KEEPIDLE / TCP_KEEPINTVL from `keepalive_probes` / `keepalive_time`
/ `keepalive_interval` where set (the system's defaults otherwise), as Envoy's TcpKeepalive
(istiod writes it from the mesh's or a DestinationRule's tcpKeepalive). A value the kernel
refuses (0) fails the connection.

Every upstream connection of the cluster's pools dials through `Dialer.connect`
(_core/upstream.pyx `connect`), TLS included; a cluster of internal addresses
(proxy/internal_listener.py) has no socket to bind or keep alive and ignores both, as Envoy.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # linux/in.h
IPV6_FREEBIND = 78  # linux/in6.h


def _family(address: str) -> int | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _source(sa: Any, path: str) -> tuple[str, int, int]:
    family = _family(sa.address)
    if family is None:
        raise UnsupportedConfig(f"{path}: {sa.address!r} is not an IP address")
    if not 0 <= sa.port_value <= 65535:
        raise UnsupportedConfig(f"{path}.port_value: {sa.port_value} is not a port")
    return sa.address, sa.port_value, family


class UpstreamBind:
    """The cluster's bind: `connect(loop, factory, host, transport)` dials bound."""

    def __init__(self, sources: list[tuple[str, int, int]], freebind: bool):
        self.sources = sources  # (address, port, family), source_address first
        self.freebind = freebind

    @classmethod
    def parse(cls, bc: Any, path: str) -> UpstreamBind:
        if not bc.HasField("source_address"):
            raise UnsupportedConfig(f"{path}.source_address: required (Envoy)")
        sources = [_source(bc.source_address, f"{path}.source_address")]
        for i, extra in enumerate(bc.extra_source_addresses):
            where = f"{path}.extra_source_addresses[{i}]"
            if extra.HasField("socket_options"):
                raise UnsupportedConfig(f"{where}.socket_options: not implemented by sofamesh")
            sources.append(_source(extra.address, f"{where}.address"))
        if len({f for _, _, f in sources}) != len(sources):
            # Envoy: one extra address, of the other family than source_address
            raise UnsupportedConfig(f"{path}.extra_source_addresses: one address per IP family")
        return cls(sources, bc.HasField("freebind") and bc.freebind.value)

    def source_for(self, address: str) -> tuple[str, int, int]:
        family = _family(address)
        for src in self.sources:
            if src[2] == family:
                return src
        return self.sources[0]

    def socket_for(self, address: str) -> socket.socket:
        """A non-blocking socket bound for a connection to `address` (OSError: not bound)."""
        ip, port, family = self.source_for(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.freebind:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.bind((ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect(self, loop: Any, factory: Any, host: Any, transport: Any) -> Any:
        """loop.create_connection's result for `host`, bound first; through the cluster's TLS
        transport (its create_connection keywords) when it has one."""
        kw = transport.connect_kw(host) if transport is not None else {}
        ip, port, _ = self.source_for(host.address)
        if not self.freebind:
            return await loop.create_connection(
                factory, host.address, host.port, local_addr=(ip, port), **kw
            )
        sock = self.socket_for(host.address)
        given = False
        try:
            await loop.sock_connect(sock, (host.address, host.port))
            # The loop's once given, also when the call fails or is cancelled (uvloop then
            # detaches the object itself); on success the descriptor is libuv's, and the
            # object must not close it when collected (proxy/internal_listener.py).
            given = True
            conn = await loop.create_connection(factory, sock=sock, **kw)
            sock.detach()
            return conn
        except BaseException:
            if not given:
                sock.close()
            raise


def keepalive(transport: Any, options: tuple[int | None, int | None, int | None]) -> None:
    """SO_KEEPALIVE on the transport's socket, with (probes, time, interval) where not None."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in zip(
        (socket.TCP_KEEPCNT, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL), options, strict=True
    ):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


class Dialer:
    """A cluster's way to dial: bound first (`bind`), kept alive once connected
    (`keepalive`: probes, time, interval; None for the system's default)."""

    def __init__(
        self, bind: UpstreamBind | None, keep: tuple[int | None, int | None, int | None] | None
    ):
        self.bind = bind
        self.keepalive = keep

    async def connect(self, loop: Any, factory: Any, host: Any, transport: Any) -> Any:
        if self.bind is not None:
            conn = await self.bind.connect(loop, factory, host, transport)
        elif transport is not None:
            conn = await transport.connect(loop, factory, host)
        else:
            conn = await loop.create_connection(factory, host.address, host.port)
        if self.keepalive is not None:
            try:
                keepalive(conn[0], self.keepalive)
            except OSError:
                conn[0].abort()
                raise
        return conn


def _keepalive_of(c: Any) -> tuple[int | None, int | None, int | None] | None:
    if not c.upstream_connection_options.HasField("tcp_keepalive"):
        return None
    ka = c.upstream_connection_options.tcp_keepalive
    return tuple(  # type: ignore[return-value]
        getattr(ka, f).value if ka.HasField(f) else None
        for f in ("keepalive_probes", "keepalive_time", "keepalive_interval")
    )


def configure(cluster: Any, c: Any, default: UpstreamBind | None, path: str) -> None:
    """Sets `cluster.dialer` from the cluster's config `c` (its bind, else the bootstrap's
    `default`; its TCP keepalive); left None when there is neither, and for clusters of
    internal addresses, which have no socket."""
    if c.HasField("upstream_bind_config"):
        bind: UpstreamBind | None = UpstreamBind.parse(
            c.upstream_bind_config, f"{path}.upstream_bind_config"
        )
    else:
        bind = default
    keep = _keepalive_of(c)
    tls = cluster.tls
    if (bind is None and keep is None) or (tls is not None and not hasattr(tls, "connect_kw")):
        cluster.dialer = None  # internal addresses (proxy/internal_listener.py): no socket
        return
    cluster.dialer = Dialer(bind, keep)
