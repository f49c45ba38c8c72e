"""DNS for STRICT_DNS / LOGICAL_DNS clusters when the system's getaddrinfo is not enough:
the cluster (or the bootstrap) names resolvers (`typed_dns_resolver_config` with Envoy's
c-ares resolver, or the deprecated `dns_resolution_config`), or `respect_dns_ttl` asks for
the records' TTL, which getaddrinfo does not give.

As c-ares does for Envoy: /etc/hosts first (an answer from there has no TTL), then A
queries (the clusters ask for IPv4: V4_ONLY) over UDP, or TCP with
`use_tcp_for_dns_lookups`, to each resolver in turn, `query_tries` times with
`query_timeout_seconds` each; a name with fewer dots than resolv.conf's `ndots` is tried
with its search domains first, unless `no_default_search_domain`. Without resolvers of its
own, the cluster asks resolv.conf's nameservers. The answer's TTL is the smallest of its A
records'.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
_A, _IN = 1, 1


class DnsError(Exception):
    pass


@dataclass
class ResolverConfig:
    resolvers: list[tuple[str, int]] = field(default_factory=list)
    tcp: bool = False
    search: bool = True
    timeout: float = 5.0
    tries: int = 4


def _system() -> tuple[list[tuple[str, int]], list[str], int]:
    """resolv.conf's nameservers, search domains and ndots."""
    servers: list[tuple[str, int]] = []
    search: list[str] = []
    ndots = 1
    try:
        with open(RESOLV_CONF) as f:
            for line in f:
                parts = line.split()
                if not parts or parts[0].startswith(("#", ";")):
                    continue
                if parts[0] == "nameserver" and len(parts) > 1:
                    servers.append((parts[1], 53))
                elif parts[0] in ("search", "domain"):
                    search = parts[1:]
                elif parts[0] == "options":
                    for o in parts[1:]:
                        if o.startswith("ndots:"):
                            ndots = int(o[6:] or 1)
    except (OSError, ValueError):
        pass
    return servers, search, ndots


def _hosts(name: str) -> list[str]:
    out = []
    try:
        with open(HOSTS) as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) > 1 and name.lower() in (p.lower() for p in parts[1:]):
                    try:
                        if ipaddress.ip_address(parts[0]).version == 4:
                            out.append(parts[0])
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def query(name: str, qid: int) -> bytes:
    labels = b"".join(
        bytes([len(p)]) + p for p in (x.encode("idna") for x in name.rstrip(".").split(".")) if p
    )
    return (
        struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack(">HH", _A, _IN)
    )


def _skip_name(buf: bytes, i: int) -> int:
    while True:
        n = buf[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def parse(buf: bytes, qid: int) -> list[tuple[str, int]]:
    """(address, ttl) of the A records of an answer; DnsError for a failure, [] for
    NXDOMAIN or no records."""
    try:
        rid, flags, qd, an = struct.unpack(">HHHH", buf[:8])
        if rid != qid or not flags & 0x8000:
            raise DnsError("not the answer to this query")
        rcode = flags & 0xF
        if rcode == 3:
            return []
        if rcode != 0:
            raise DnsError(f"rcode {rcode}")
        i = 12
        for _ in range(qd):
            i = _skip_name(buf, i) + 4
        out = []
        for _ in range(an):
            i = _skip_name(buf, i)
            rtype, rclass, ttl, rdlen = struct.unpack(">HHIH", buf[i : i + 10])
            i += 10
            if rtype == _A and rclass == _IN and rdlen == 4:
                out.append((str(ipaddress.IPv4Address(buf[i : i + 4])), ttl))
            i += rdlen
        return out
    except (struct.error, IndexError, ValueError) as e:
        raise DnsError(f"malformed answer: {e}") from None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done() and len(data) >= 2 and data[:2] == struct.pack(">H", self.qid):
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(DnsError(str(exc)))


async def _ask(
    server: tuple[str, int], name: str, tcp: bool, timeout: float
) -> list[tuple[str, int]]:
    """One query to one server: its A records ([] for NXDOMAIN or none)."""
    qid = int.from_bytes(os.urandom(2), "big")
    q = query(name, qid)
    loop = asyncio.get_running_loop()
    if tcp:
        r, w = await asyncio.wait_for(asyncio.open_connection(*server), timeout)
        try:
            w.write(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", await asyncio.wait_for(r.readexactly(2), timeout))[0]
            data = await asyncio.wait_for(r.readexactly(n), timeout)
        finally:
            w.close()
    else:
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Udp(qid), remote_addr=server
        )
        try:
            transport.sendto(q)
            data = await asyncio.wait_for(proto.done, timeout)
        finally:
            transport.close()
    return parse(data, qid)


async def resolve(name: str, cfg: ResolverConfig) -> list[tuple[str, int]]:
    """(address, ttl) for `name`: /etc/hosts (ttl 0), else the resolvers; [] when the
    name does not exist; DnsError when no resolver answered."""
    local = _hosts(name)
    if local:
        return [(a, 0) for a in local]
    servers, search, ndots = _system()
    servers = cfg.resolvers or servers
    if not servers:
        raise DnsError("no DNS resolver (none configured, none in /etc/resolv.conf)")
    names = [name]
    if cfg.search and not name.endswith(".") and search:
        fqdns = [f"{name}.{d}" for d in search]
        names = [*fqdns, name] if name.count(".") < ndots else [name, *fqdns]
    answered = False
    last = "no answer"
    for candidate in names:
        for _ in range(max(cfg.tries, 1)):
            got = None
            for server in servers:
                try:
                    got = await _ask(server, candidate, cfg.tcp, cfg.timeout)
                    break
                except DnsError as e:
                    last = f"{server[0]}:{server[1]}: {e}"
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                    last = f"{server[0]}:{server[1]}: {type(e).__name__}"
            if got is not None:
                answered = True
                if got:
                    return got
                break  # the name does not exist there: the next candidate
    if answered:
        return []
    raise DnsError(last)


def config_of(cluster: Any, bootstrap: Any, path: str) -> ResolverConfig | None:
    """The cluster's resolver settings (else the bootstrap's); None: getaddrinfo will do
    (no resolvers named and no TTL wanted)."""
    for owner, opath in ((cluster, path), (bootstrap, "")):
        if owner is None:
            continue
        if owner.HasField("typed_dns_resolver_config"):
            tc = owner.typed_dns_resolver_config
            tpath = f"{opath}.typed_dns_resolver_config" if opath else "typed_dns_resolver_config"
            if tc.typed_config.type_url != CARES:
                raise UnsupportedConfig(
                    f"{tpath}.typed_config: DNS resolver {tc.name or tc.typed_config.type_url!r} "
                    "is not implemented by sofamesh (envoy.network.dns_resolver.cares is)"
                )
            from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2

            c = cares_dns_resolver_pb2.CaresDnsResolverConfig()
            tc.typed_config.Unpack(c)
            out = ResolverConfig(
                resolvers=[
                    _address(a, f"{tpath}.resolvers[{i}]") for i, a in enumerate(c.resolvers)
                ],
                tcp=c.dns_resolver_options.use_tcp_for_dns_lookups,
                search=not c.dns_resolver_options.no_default_search_domain,
            )
            if c.HasField("query_timeout_seconds"):
                out.timeout = float(max(c.query_timeout_seconds.value, 1))
            if c.HasField("query_tries"):
                out.tries = max(c.query_tries.value, 1)
            if c.use_resolvers_as_fallback and _system()[0]:
                out.resolvers = []  # the system's resolvers come first
            return out
        if owner.HasField("dns_resolution_config"):
            d = owner.dns_resolution_config
            dpath = f"{opath}.dns_resolution_config" if opath else "dns_resolution_config"
            return ResolverConfig(
                resolvers=[
                    _address(a, f"{dpath}.resolvers[{i}]") for i, a in enumerate(d.resolvers)
                ],
                tcp=d.dns_resolver_options.use_tcp_for_dns_lookups,
                search=not d.dns_resolver_options.no_default_search_domain,
            )
    if cluster is not None and cluster.respect_dns_ttl:
        return ResolverConfig()
    return None


def _address(a: Any, path: str) -> tuple[str, int]:
    if a.WhichOneof("address") != "socket_address":
        raise UnsupportedConfig(f"{path}: a DNS resolver needs a socket address")
    sa = a.socket_address
    return sa.address, sa.port_value or 53


def refresh_rate(cluster: Any) -> float:
    """The cluster's dns_refresh_rate in seconds (Envoy's default 5 s; at least 1 ms)."""
    if cluster is not None and cluster.HasField("dns_refresh_rate"):
        return max(cluster.dns_refresh_rate.ToNanoseconds() / 1e9, 0.001)
    return 5.0


def _register() -> None:
    from sofamesh.config.support import register_extension

    register_extension(CARES, __name__)


_register()
