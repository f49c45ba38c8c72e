"""`Cluster.upstream_bind_config`, and the bootstrap's `cluster_manager.upstream_bind_config`
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

Every upstream connection of the cluster's pools dials through `connect` (_core/upstream.pyx
`connect`), TLS included; a cluster of internal addresses (proxy/internal_listener.py) has no
socket to bind and ignores it, as Envoy does.
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


def configure(cluster: Any, c: Any, default: UpstreamBind | None, path: str) -> None:
    """Sets `cluster.bind` from the cluster's config `c` (else the bootstrap's `default`);
    left None for clusters of internal addresses, which have no socket."""
    if c.HasField("upstream_bind_config"):
        bind: UpstreamBind | None = UpstreamBind.parse(
            c.upstream_bind_config, f"{path}.upstream_bind_config"
        )
    else:
        bind = default
    tls = cluster.tls
    if bind is not None and tls is not None and not hasattr(tls, "connect_kw"):
        bind = None  # internal addresses (proxy/internal_listener.py): nothing to bind
    cluster.bind = bind
