"""Transparent interception, as an Istio sidecar's iptables rules use it (outbound traffic
REDIRECTed to 15001, inbound to 15006):

- `envoy.filters.listener.original_dst`: a connection's local address is its original
  destination, read with SO_ORIGINAL_DST (what the NAT rewrote); it is what filter chains
  match on (proxy/listener_chains.py), what RBAC's destination rules and ORIGINAL_DST
  clusters see (`local_address`), on a TLS chain too (its transport is found by the TCP
  one's socket). Without a NAT entry the socket's own address stays.
- `Listener.use_original_dst`: a connection whose restored destination is another listener's
  address (IP:port, else 0.0.0.0:port) is handed to that listener (often one with
  `bind_to_port: false`), else served by this one's chains (Server.listener_for).
- ORIGINAL_DST clusters with CLUSTER_PROVIDED load balancing (`OriginalDstHosts`): the host is
  the downstream connection's (restored) local address, or with
  `original_dst_lb_config.use_http_header` the `x-envoy-original-dst-host` header (or
  `http_header_name`); `upstream_port_override` replaces the port. Hosts are made on demand
  and removed once unused for `cleanup_interval` (Envoy's default 5 s).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import weakref
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
_RESTORED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transport -> (ip, port)
# A TLS connection's transport (uvloop's _SSLProtocolTransport) takes no weak reference, but
# hands out the socket object of the TCP transport under it (uvloop's PseudoSocket, one per
# transport): that TCP transport, found by its socket, holds what was restored.
# id(socket) -> weak reference to the TCP transport
_BY_SOCKET: dict[int, weakref.ref] = {}
_REMOTE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # internal: restored peer


def _internal(transport: Any) -> tuple[str, int] | None:
    """On an internal listener's connection, Envoy's original_dst reads what the dialling
    connection passed through (proxy/internal_listener.py): the `local` address in the
    `envoy.filters.listener.original_dst` metadata, then the filter state objects
    `...original_dst.local_ip` (which wins) and `...original_dst.remote_ip` (the peer)."""
    from sofamesh.proxy.filter_state import LOCAL_IP, REMOTE_IP, parse_address
    from sofamesh.proxy.internal_listener import context

    ctx = context(transport)
    if ctx is None:
        return None
    addr = None
    md = ctx.metadata.get("envoy.filters.listener.original_dst")
    if isinstance(md, dict) and isinstance(md.get("local"), str):
        addr = parse_address(md["local"])
    fs = ctx.filter_state
    if LOCAL_IP in fs:
        addr = parse_address(fs[LOCAL_IP][0]) or addr
    remote = parse_address(fs[REMOTE_IP][0]) if REMOTE_IP in fs else None
    try:
        if addr is not None:
            _RESTORED[transport] = addr
        if remote is not None:
            _REMOTE[transport] = remote
    except TypeError:
        pass
    return addr


def restore(transport: Any) -> tuple[str, int] | None:
    """The connection's original destination (SO_ORIGINAL_DST; on an internal listener,
    what its dialler passed through), remembered as its local address; None (nothing
    remembered) when the socket has none."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_UNIX:
            return _internal(transport)
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, ip = struct.unpack_from("!2xH4s", raw)
            addr = (socket.inet_ntop(socket.AF_INET, ip), port)
        elif sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, ip = struct.unpack_from("!2xH4x16s", raw)
            addr = (socket.inet_ntop(socket.AF_INET6, ip), port)
        else:
            return None
    except OSError:  # no NAT entry: the local address stays the socket's
        return None
    try:
        _RESTORED[transport] = addr
    except TypeError:  # no weak reference to it: the address is used, not remembered
        return addr
    key = id(sock)

    def forget(ref: weakref.ref, key: int = key) -> None:
        if _BY_SOCKET.get(key) is ref:
            del _BY_SOCKET[key]

    _BY_SOCKET[key] = weakref.ref(transport, forget)
    return addr


def _under_tls(transport: Any) -> tuple[str, int] | None:
    """What was restored on the TCP transport under a TLS transport (same socket object)."""
    sock = transport.get_extra_info("socket")
    ref = _BY_SOCKET.get(id(sock)) if sock is not None else None
    tcp = ref() if ref is not None else None
    if tcp is None or tcp.get_extra_info("socket") is not sock:
        return None
    return _RESTORED.get(tcp)


def local_address(transport: Any) -> tuple[str, int] | None:
    """The connection's local address: the original destination the original_dst listener
    filter restored, else the socket's."""
    if transport is None:
        return None
    if _RESTORED:
        try:
            addr = _RESTORED.get(transport)
        except TypeError:  # a transport that takes no weak reference (TLS): the TCP one's
            addr = _under_tls(transport)
        if addr is not None:
            return addr
    name = transport.get_extra_info("sockname")
    return (name[0], name[1]) if name else None


def remote_address(transport: Any) -> Any:
    """The connection's peer: the socket's, or on an internal listener's connection the
    `remote_ip` its dialler passed through."""
    if transport is None:
        return None
    if _REMOTE:
        try:
            addr = _REMOTE.get(transport)
        except TypeError:
            addr = None
        if addr is not None:
            return addr
    return transport.get_extra_info("peername")


def check_cluster(c: Any, ctype: str, lb: str, path: str) -> None:
    """Envoy's pairing rules: ORIGINAL_DST needs CLUSTER_PROVIDED and the reverse."""
    if ctype == "ORIGINAL_DST" and lb != "CLUSTER_PROVIDED":
        raise UnsupportedConfig(
            f"{path}.lb_policy: cluster: LB policy {lb} is not valid for Cluster type "
            "ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'"
        )
    if lb == "CLUSTER_PROVIDED" and ctype != "ORIGINAL_DST":
        raise UnsupportedConfig(
            f"{path}.lb_policy: cluster: LB policy CLUSTER_PROVIDED is not valid for Cluster "
            f"type {ctype}. 'CLUSTER_PROVIDED' is allowed only with cluster type 'ORIGINAL_DST'"
        )
    if ctype == "ORIGINAL_DST" and c.load_assignment.endpoints:
        raise UnsupportedConfig(
            f"{path}.load_assignment: ORIGINAL_DST clusters must have no load assignment configured"
        )


class OriginalDstHosts:
    """The hosts of one ORIGINAL_DST cluster (Cluster.original_dst)."""

    def __init__(self, cluster: Any, c: Any, loop: Any) -> None:
        self.cluster = cluster
        self.loop = loop
        lbc = c.original_dst_lb_config
        self.use_header = lbc.use_http_header
        self.header = (lbc.http_header_name or "x-envoy-original-dst-host").lower().encode()
        self.port_override = (
            lbc.upstream_port_override.value if lbc.HasField("upstream_port_override") else 0
        )
        ci = c.cleanup_interval
        self.cleanup = ci.seconds + ci.nanos / 1e9 if c.HasField("cleanup_interval") else 5.0
        self.hosts: dict[tuple[str, int], Any] = {}
        self.used: set[tuple[str, int]] = set()
        self.timer: Any = None

    def pick(self, transport: Any, header_value: bytes | None) -> Any:
        """The host for a request or connection (None: no usable destination, Envoy's
        "no healthy upstream")."""
        addr = None
        if self.use_header and header_value:
            addr = _parse_host_port(header_value.decode("latin-1"))
            if addr is None:
                return None  # Envoy: an unparsable header selects no host
        if addr is None:
            addr = local_address(transport)
            if addr is None:
                return None
        if self.port_override:
            addr = (addr[0], self.port_override)
        h = self.hosts.get(addr)
        if h is None:
            from sofamesh.proxy.localities import make_host

            h = self.hosts[addr] = make_host(addr[0], addr[1], 1, (0, "", 0, "", 0))
            self.cluster.set_hosts(list(self.hosts.values()))
            if self.timer is None and self.loop is not None:
                self.timer = self.loop.call_later(self.cleanup, self._sweep)
        self.used.add(addr)
        return h

    def _sweep(self) -> None:
        """Envoy's cleanup: hosts not picked since the last sweep and idle go."""
        self.timer = None
        gone = [
            a
            for a, h in self.hosts.items()
            if a not in self.used and h.rq_active == 0 and h.cx_active == 0
        ]
        for a in gone:
            del self.hosts[a]
        self.used.clear()
        if gone:
            self.cluster.set_hosts(list(self.hosts.values()))
        if self.hosts:
            self.timer = self.loop.call_later(self.cleanup, self._sweep)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _parse_host_port(v: str) -> tuple[str, int] | None:
    v = v.strip()
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    p = int(port)
    return (host, p) if 0 < p < 65536 else None
