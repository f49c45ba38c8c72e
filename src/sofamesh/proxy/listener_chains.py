"""A listener with several filter chains, TLS, or listener filters: Envoy's filter chain
selection, done once per connection before any network filter sees a byte.

Per connection (`_Selector`, the listening socket's protocol until a chain is chosen):
  accept -> [listener filters peek: tls_inspector reads the ClientHello (SNI, ALPN),
  http_inspector the request line] -> FilterChainMatch (Envoy's order: destination port,
  destination IP, server name, transport protocol, application protocols, direct source
  IP, source type, source IP, source port; at each level the most specific match wins and
  the others are dropped) -> the chain's view (HCM or network Chain) gets the connection:
  plaintext: `transport.set_protocol(inner)` and the peeked bytes replayed;
  TLS: `tls.wrap_server` puts uvloop's SSLProtocol in between and feeds it the ClientHello.
Work done once per connection, in Python: the ClientHello parse costs ~10 us beside a
handshake's ~1 ms of OpenSSL.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

from sofamesh._core.http_proxy import HcmConfig
from sofamesh.proxy import original_dst
from sofamesh.proxy import tls as tls_mod
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.proxy")

TLS_INSPECTOR = ("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector")
HTTP_INSPECTOR = ("envoy.filters.listener.http_inspector", "envoy.listener.http_inspector")
ORIGINAL_DST = ("envoy.filters.listener.original_dst", "envoy.listener.original_dst")
MAX_CLIENT_HELLO = 16 * 1024  # Envoy's tls_inspector default max_client_hello_size

# parse results
NEED_MORE, NOT_TLS, IS_TLS = 0, 1, 2


def parse_client_hello(buf: bytes) -> tuple[int, str, list[str]]:
    """(NEED_MORE | NOT_TLS | IS_TLS, sni, alpn) from the first bytes of a connection.

    TLS record: type 0x16 (handshake), version 3.x, length(2); the handshake message
    (type 1 ClientHello, length(3)) may span records. ClientHello: version(2) random(32)
    session_id<1> cipher_suites<2> compression<1> extensions<2>: type(2) len(2) data;
    server_name (0): list<2> of type(1)=0 name<2>; ALPN (16): list<2> of proto<1>."""
    n = len(buf)
    if n == 0:
        return NEED_MORE, "", []
    if buf[0] != 0x16:
        return NOT_TLS, "", []
    if n < 3:
        return NEED_MORE, "", []
    if buf[1] != 3:
        return NOT_TLS, "", []
    hs = bytearray()
    pos = 0
    while True:
        if n - pos < 5:
            if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                break
            return NEED_MORE, "", []
        if buf[pos] != 0x16 or buf[pos + 1] != 3:
            return NOT_TLS, "", []
        rlen = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if n - pos - 5 < rlen:
            hs += buf[pos + 5 : n]
            if len(hs) >= 4 and hs[0] != 1:
                return NOT_TLS, "", []
            return NEED_MORE, "", []
        hs += buf[pos + 5 : pos + 5 + rlen]
        pos += 5 + rlen
        if len(hs) >= 4:
            if hs[0] != 1:
                return NOT_TLS, "", []
            if len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                break
    try:
        return (IS_TLS, *_hello_fields(bytes(hs[4 : 4 + int.from_bytes(hs[1:4], "big")])))
    except (IndexError, ValueError):
        return NOT_TLS, "", []


def _hello_fields(h: bytes) -> tuple[str, list[str]]:
    p = 34
    p += 1 + h[p]  # session id
    p += 2 + int.from_bytes(h[p : p + 2], "big")  # cipher suites
    p += 1 + h[p]  # compression methods
    if p + 2 > len(h):
        return "", []
    end = p + 2 + int.from_bytes(h[p : p + 2], "big")
    if end > len(h):
        raise ValueError("extensions past the message")
    p += 2
    sni, alpn = "", []
    while p + 4 <= end:
        et = int.from_bytes(h[p : p + 2], "big")
        el = int.from_bytes(h[p + 2 : p + 4], "big")
        d = h[p + 4 : p + 4 + el]
        if len(d) != el:
            raise ValueError("extension past the message")
        if et == 0 and len(d) >= 2:
            q, lend = 2, 2 + int.from_bytes(d[0:2], "big")
            while q + 3 <= min(lend, len(d)):
                nt, nl = d[q], int.from_bytes(d[q + 1 : q + 3], "big")
                if nt == 0:
                    sni = d[q + 3 : q + 3 + nl].decode("ascii", "replace").lower()
                    break
                q += 3 + nl
        elif et == 16 and len(d) >= 2:
            q, lend = 2, 2 + int.from_bytes(d[0:2], "big")
            while q < min(lend, len(d)):
                pl = d[q]
                alpn.append(d[q + 1 : q + 1 + pl].decode("ascii", "replace"))
                q += 1 + pl
        p += 4 + el
    return sni, alpn


_METHOD = re.compile(rb"[A-Za-z]{1,20}")  # a token: Envoy's inspector waits on text
_TARGET = re.compile(rb"[!-~]+")  # visible ASCII, no space


def parse_http(buf: bytes) -> tuple[int, str]:
    """http_inspector: (NEED_MORE | NOT_TLS(=not HTTP) | IS_TLS(=HTTP), protocol).
    `METHOD SP target SP HTTP/1.x CRLF`, or the h2c preface; bytes that cannot begin a
    request line answer "not HTTP" at once (a client waiting for its echo is not held)."""
    if buf.startswith(b"PRI * HTTP/2.0"):
        return IS_TLS, "h2c"
    if len(buf) < 14 and b"PRI * HTTP/2.0".startswith(buf):
        return NEED_MORE, ""
    eol = buf.find(b"\r\n")
    line = buf[:eol] if eol >= 0 else buf
    parts = line.split(b" ")
    if not _METHOD.fullmatch(parts[0]) and not (
        eol < 0 and len(parts) == 1 and _METHOD.fullmatch(parts[0] + b"A")
    ):
        return (NEED_MORE, "") if not parts[0] and eol < 0 else (NOT_TLS, "")
    if len(parts) >= 2 and parts[1] and not _TARGET.fullmatch(parts[1]):
        return NOT_TLS, ""
    if len(parts) > 3:
        return NOT_TLS, ""
    if len(parts) == 3:
        version = parts[2]
        if eol >= 0:
            ok = version in (b"HTTP/1.1", b"HTTP/1.0")
            return (IS_TLS, version.decode().lower()) if ok else (NOT_TLS, "")
        if not (b"HTTP/1.1".startswith(version) or b"HTTP/1.0".startswith(version)):
            return NOT_TLS, ""
    if eol >= 0:
        return NOT_TLS, ""
    return (NEED_MORE, "") if len(buf) < 8192 else (NOT_TLS, "")


# ------------------------------------------------------------------ matching
def _cidrs(ranges: Any) -> list[Any]:
    out = []
    for r in ranges:
        plen = r.prefix_len.value if r.HasField("prefix_len") else None
        addr = ipaddress.ip_address(r.address_prefix)
        if plen is None:
            plen = addr.max_prefixlen
        out.append(ipaddress.ip_network(f"{r.address_prefix}/{plen}", strict=False))
    return out


def _cidr_score(nets: list[Any], ip: Any) -> int:
    if not nets:
        return 0
    best = -1
    for net in nets:
        if ip is not None and ip.version == net.version and ip in net:
            best = max(best, net.prefixlen + 1)
    return best


class ChainMatch:
    """One FilterChainMatch, compiled; `scores(conn)` gives Envoy's specificity per level
    (-1: no match, 0: the field is unset, higher: more specific)."""

    def __init__(self, m: Any | None, path: str) -> None:
        self.dport = (
            m.destination_port.value if m is not None and m.HasField("destination_port") else None
        )
        self.dst = _cidrs(m.prefix_ranges) if m is not None else []
        self.names = [s.lower() for s in m.server_names] if m is not None else []
        self.transport = m.transport_protocol if m is not None else ""
        self.alpn = list(m.application_protocols) if m is not None else []
        self.direct_src = _cidrs(m.direct_source_prefix_ranges) if m is not None else []
        self.source_type = m.source_type if m is not None else 0
        self.src = _cidrs(m.source_prefix_ranges) if m is not None else []
        self.sports = set(m.source_ports) if m is not None else set()
        if m is not None and (m.HasField("suffix_len") or m.address_suffix):
            raise UnsupportedConfig(
                f"{path}: FilterChainMatch.address_suffix/suffix_len are not implemented by sofamesh"
            )
        for n in self.names:
            if "*" in n and not (n.startswith("*.") and "*" not in n[1:]):
                raise UnsupportedConfig(f"{path}.server_names: bad wildcard {n!r}")

    def key(self) -> tuple:
        return (
            self.dport,
            tuple(sorted(map(str, self.dst))),
            tuple(sorted(self.names)),
            self.transport,
            tuple(sorted(self.alpn)),
            tuple(sorted(map(str, self.direct_src))),
            self.source_type,
            tuple(sorted(map(str, self.src))),
            tuple(sorted(self.sports)),
        )

    def scores(self, c: _ConnInfo) -> tuple[int, ...]:
        if self.names:
            if c.sni in self.names:
                sn = 1 << 16
            else:
                sn = -1
                for n in self.names:
                    if n.startswith("*.") and c.sni.endswith(n[1:]):
                        sn = max(sn, len(n))
        else:
            sn = 0
        if self.source_type == 0:
            st = 0
        else:
            local = c.src_ip is not None and (c.src_ip.is_loopback or c.src_ip == c.dst_ip)
            st = 1 if local == (self.source_type == 1) else -1
        return (
            0 if self.dport is None else (1 if self.dport == c.dst_port else -1),
            _cidr_score(self.dst, c.dst_ip),
            sn,
            0 if not self.transport else (1 if self.transport == c.transport else -1),
            0 if not self.alpn else (1 if any(a in c.alpn for a in self.alpn) else -1),
            _cidr_score(self.direct_src, c.src_ip),
            st,
            _cidr_score(self.src, c.src_ip),
            0 if not self.sports else (1 if c.src_port in self.sports else -1),
        )

    def trivial(self) -> bool:
        """No criterion at all: every connection matches."""
        return self.key() == ChainMatch(None, "").key()

    def needs(self) -> set[str]:
        """What must be known before this chain can be ruled in or out."""
        out = set()
        if self.names or self.transport or self.alpn:
            out.add("inspect")
        return out


class _ConnInfo:
    __slots__ = ("alpn", "dst_ip", "dst_port", "sni", "src_ip", "src_port", "transport")

    def __init__(self, transport: Any) -> None:
        local = original_dst.local_address(transport) or ("0.0.0.0", 0)
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        self.dst_ip = _ip(local[0])
        self.dst_port = local[1]
        self.src_ip = _ip(peer[0])
        self.src_port = peer[1]
        self.sni = ""
        self.transport = "raw_buffer"
        self.alpn: list[str] = []


def _ip(s: str) -> Any:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class FilterChain:
    __slots__ = ("index", "match", "name", "tls", "view")

    def __init__(self, index: int, name: str, match: ChainMatch, view: Any, tls: Any) -> None:
        self.index = index
        self.name = name
        self.match = match
        self.view = view  # HcmConfig | network Chain
        self.tls = tls  # tls.TlsContext | None


def select(chains: list[FilterChain], c: _ConnInfo) -> FilterChain | None:
    """Envoy's FilterChainManager lookup: level by level, keep the most specific."""
    cands = [(ch, ch.match.scores(c)) for ch in chains]
    for level in range(9):
        best = max((s[level] for _, s in cands), default=-1)
        if best < 0:
            return None
        cands = [(ch, s) for ch, s in cands if s[level] == best]
    return cands[0][0] if cands else None


# ------------------------------------------------------------------ the view
class ListenerChains:
    """What a listening socket serves when it has several chains, TLS or listener filters:
    the same surface as an HcmConfig / network Chain view (protocol_factory, conns,
    draining, close_all, routes)."""

    def __init__(self, loop: Any, stats: Any, stat_name: str) -> None:
        self.loop = loop
        self.stats = stats
        self.chains: list[FilterChain] = []
        self.default: FilterChain | None = None
        self.inspect_tls = False
        self.inspect_http = False
        self.timeout = 15.0
        self.continue_on_timeout = False
        # ListenerFilter.filter_disabled of the inspectors: (destination port) -> disabled
        self.tls_disabled: Any = None
        self.http_disabled: Any = None
        self.original_dst = False  # envoy.filters.listener.original_dst
        self.use_original_dst = False  # Listener.use_original_dst: Server.listener_for
        self.server: Any = None
        self.selecting: set[_Selector] = set()
        self.only: FilterChain | None = None  # the one chain, when it matches everything
        # Listener.filter_chain_matcher (proxy/chain_matcher.py): conn info -> chain name
        self.matcher: Any = None
        self.by_name: dict[str, FilterChain] = {}
        self._draining = False
        pre = f"listener.{stat_name}."
        self.no_match = stats.counter(pre + "no_filter_chain_match")
        self.pre_timeout = stats.counter(pre + "downstream_pre_cx_timeout")
        self.pre_active = stats.gauge(pre + "downstream_pre_cx_active")
        self.ti = {
            n: stats.counter("tls_inspector." + n)
            for n in (
                "client_hello_too_large",
                "tls_found",
                "tls_not_found",
                "alpn_found",
                "alpn_not_found",
                "sni_found",
                "sni_not_found",
            )
        }
        self.hi = {
            n: stats.counter("http_inspector." + n)
            for n in ("read_error", "http10_found", "http11_found", "http2_found", "http_not_found")
        }

    # the view surface ---------------------------------------------------------
    def protocol_factory(self) -> _Selector:
        return _Selector(self)

    def views(self) -> list[Any]:
        out = [c.view for c in self.chains]
        if self.default is not None:
            out.append(self.default.view)
        return out

    @property
    def conns(self) -> set:
        out: set = set(self.selecting)
        for v in self.views():
            out |= set(v.conns)
        return out

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        for v in self.views():
            v.draining = value

    @property
    def routes(self) -> Any:
        for v in self.views():
            if isinstance(v, HcmConfig):
                return v.routes
        return None

    @routes.setter
    def routes(self, table: Any) -> None:
        """Every HCM chain's table (scoped routes: one chain; Server.set_route_config). RDS
        sets each chain's own (chain_view: proxy/dynamic.py), as each HCM subscribes."""
        for v in self.views():
            if isinstance(v, HcmConfig):
                v.routes = table

    def chain_view(self, index: int) -> Any:
        """The view of filter_chains[index] (-1: the default_filter_chain)."""
        if index < 0:
            return self.default.view if self.default is not None else None
        for c in self.chains:
            if c.index == index:
                return c.view
        return None

    def close_all(self) -> None:
        for s in list(self.selecting):
            s.abort()
        for v in self.views():
            if isinstance(v, HcmConfig):
                for c in list(v.conns):
                    c.close()
            else:
                v.close_all()

    def tls_contexts(self) -> list[Any]:
        return [c.tls for c in [*self.chains, self.default] if c is not None and c.tls is not None]

    # per connection -------------------------------------------------------------
    def choose(self, c: _ConnInfo) -> FilterChain | None:
        if self.matcher is not None:  # filter_chain_matcher: the chains' own matches unused
            name = self.matcher(c)
            ch = self.by_name.get(name) if name is not None else None
        else:
            ch = select(self.chains, c)
        if ch is None:
            ch = self.default
        if ch is None:
            self.no_match.value += 1
            self.no_match.used = True
        return ch


def _bump(c: Any) -> None:
    c.value += 1
    c.used = True


class _Selector:
    """A connection's protocol until its filter chain is chosen (asyncio Protocol)."""

    __slots__ = ("buf", "chains", "done", "http", "timer", "tls", "transport")

    def __init__(self, chains: ListenerChains) -> None:
        self.chains = chains
        self.transport: Any = None
        self.buf = b""
        self.timer: Any = None
        self.done = False
        self.tls = chains.inspect_tls  # the inspectors this connection runs (filter_disabled)
        self.http = chains.inspect_http

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        lc = self.chains
        if lc.original_dst:
            dst = original_dst.restore(transport)
            if dst is not None and lc.use_original_dst:
                # Listener.use_original_dst: the listener at the original destination
                # serves the connection (its own listener filters run), else this one
                other = lc.server.listener_for(dst)
                if other is not None and other is not lc:
                    self.done = True
                    inner = other.protocol_factory()
                    transport.set_protocol(inner)
                    inner.connection_made(transport)
                    return
        if lc.tls_disabled is not None or lc.http_disabled is not None:
            # ListenerFilter.filter_disabled: an inspector this connection does not run
            port = _ConnInfo(transport).dst_port
            if self.tls and lc.tls_disabled is not None and lc.tls_disabled(port):
                self.tls = False
            if self.http and lc.http_disabled is not None and lc.http_disabled(port):
                self.http = False
        if not (self.tls or self.http):
            self._hand_over(None)
            return
        lc.selecting.add(self)
        lc.pre_active.value += 1
        lc.pre_active.used = True
        if lc.timeout > 0:
            self.timer = lc.loop.call_later(lc.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        self._inspect(False)

    def eof_received(self) -> bool:
        if not self.done:
            # closed while the listener filters still wait for bytes: as Envoy, the
            # connection goes without a filter chain and the inspectors count nothing
            self.abort()
        return False

    def connection_lost(self, exc: Any) -> None:
        if not self.done:
            self._finish()

    def abort(self) -> None:
        self._finish()
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lc = self.chains
        if self in lc.selecting:
            lc.selecting.discard(self)
            lc.pre_active.value -= 1

    def _timed_out(self) -> None:
        self.timer = None
        lc = self.chains
        _bump(lc.pre_timeout)
        if lc.continue_on_timeout:
            self._inspect(True)
        else:
            self.abort()

    def _inspect(self, final: bool) -> None:
        lc = self.chains
        info = _ConnInfo(self.transport)
        buf = self.buf
        is_tls = False
        if self.tls:
            state, sni, alpn = parse_client_hello(buf)
            if state == NEED_MORE and not final:
                if len(buf) > MAX_CLIENT_HELLO:
                    _bump(lc.ti["client_hello_too_large"])
                    self.abort()
                return
            if state == IS_TLS:
                is_tls = True
                info.transport = "tls"
                info.sni = sni
                info.alpn = alpn
                _bump(lc.ti["tls_found"])
                _bump(lc.ti["sni_found" if sni else "sni_not_found"])
                _bump(lc.ti["alpn_found" if alpn else "alpn_not_found"])
            else:
                _bump(lc.ti["tls_not_found"])
        if self.http and not is_tls:
            state, proto = parse_http(buf)
            if state == NEED_MORE and not final:
                return
            if state == IS_TLS:
                info.alpn = [proto]
                key = {"http/1.0": "http10_found", "http/1.1": "http11_found"}.get(
                    proto, "http2_found"
                )
                _bump(lc.hi[key])
            else:
                _bump(lc.hi["http_not_found"])
        self._finish()
        self._hand_over(info)

    def _hand_over(self, info: _ConnInfo | None) -> None:
        self.done = True
        lc = self.chains
        # PERF(benchmarks/tls_bench.py): one chain matching everything needs no lookup
        # (reading and parsing the addresses was ~5% of a TLS handshake's CPU)
        ch = lc.only if lc.only is not None else lc.choose(info or _ConnInfo(self.transport))
        t = self.transport
        if ch is None or lc.draining:
            t.abort()  # Envoy closes a connection no chain matches
            return
        inner = ch.view.protocol_factory()
        buf, self.buf = self.buf, b""
        if ch.tls is not None:
            tls_mod.wrap_server(lc.loop, t, inner, ch.tls, buf)
            return
        t.set_protocol(inner)
        inner.connection_made(t)
        if buf and not t.is_closing():
            inner.data_received(buf)


# ------------------------------------------------------------------ building
def needs_chains(lst: Any) -> bool:
    """Whether a listener needs chain selection (else its one chain serves the socket)."""
    if len(lst.filter_chains) != 1 or lst.HasField("default_filter_chain"):
        return True
    if lst.HasField("filter_chain_matcher"):
        return True
    if lst.use_original_dst.value:
        return True
    ch = lst.filter_chains[0]
    if ch.HasField("filter_chain_match") or ch.HasField("transport_socket"):
        return True
    return any(_listener_filter_kind(f) is not None for f in lst.listener_filters)


def _listener_filter_kind(f: Any) -> str | None:
    url = f.typed_config.type_url
    if f.name in TLS_INSPECTOR or url.endswith("tls_inspector.v3.TlsInspector"):
        return "tls"
    if f.name in HTTP_INSPECTOR or url.endswith("http_inspector.v3.HttpInspector"):
        return "http"
    if f.name in ORIGINAL_DST or url.endswith("original_dst.v3.OriginalDst"):
        return "original_dst"
    return None


def build(server: Any, li: Any, lst: Any, path: str, stat_name: str) -> ListenerChains:
    """The ListenerChains of listener `lst`; each chain's view by server._chain_view."""
    lc = ListenerChains(server._loop, server.stats, stat_name)
    for i, f in enumerate(lst.listener_filters):
        kind = _listener_filter_kind(f)
        fpath = f"{path}.listener_filters[{i}]"
        off = (
            disabled_when(f.filter_disabled, fpath + ".filter_disabled")
            if f.HasField("filter_disabled")
            else None
        )
        if kind == "tls":
            _check_tls_inspector(f, fpath)
            lc.inspect_tls = True
            lc.tls_disabled = off
        elif kind == "http":
            lc.inspect_http = True
            lc.http_disabled = off
        elif kind == "original_dst":
            lc.original_dst = True
            if off is not None:
                raise UnsupportedConfig(
                    f"{fpath}.filter_disabled: on original_dst, not implemented by sofamesh"
                )
    if lst.HasField("listener_filters_timeout"):
        t = lst.listener_filters_timeout
        lc.timeout = t.seconds + t.nanos / 1e9
    lc.continue_on_timeout = lst.continue_on_listener_filters_timeout
    if lst.use_original_dst.value:
        # Envoy adds the original_dst listener filter itself to such a listener
        lc.original_dst = lc.use_original_dst = True
        lc.server = server
    seen: dict[tuple, int] = {}
    scoped: list[str] = []  # paths of HCMs routing by scopes (SRDS)
    entries = [(i, ch, f"{path}.filter_chains[{i}]") for i, ch in enumerate(lst.filter_chains)]
    if lst.HasField("default_filter_chain"):
        entries.append((-1, lst.default_filter_chain, f"{path}.default_filter_chain"))
    for i, ch, cpath in entries:
        m = ChainMatch(
            ch.filter_chain_match if ch.HasField("filter_chain_match") else None,
            cpath + ".filter_chain_match",
        )
        if i >= 0 and not lst.HasField("filter_chain_matcher"):
            k = m.key()
            if k in seen:
                raise UnsupportedConfig(
                    f"{cpath}: error adding listener '{lst.name}': multiple filter chains with "
                    f"the same matching rules are defined (filter_chains[{seen[k]}])"
                )
            seen[k] = i
        tls = None
        if ch.HasField("transport_socket"):
            tls = tls_mod.downstream(
                ch.transport_socket,
                server.stats,
                stat_name,
                cpath + ".transport_socket",
                record_sni=lc.inspect_tls,
            )
            if tls is not None:
                from sofamesh.proxy import sds

                sds.manager(server).register(tls)
        view = server._chain_view(li, lst, i, ch, cpath)
        if isinstance(view, HcmConfig) and tls is not None:
            view.scheme = b"https"  # x-forwarded-proto, as Envoy sets it for TLS
        if isinstance(view, HcmConfig) and _hcm_scoped(ch):
            scoped.append(f"{cpath}.filters[{len(ch.filters) - 1}].typed_config.scoped_routes")
        fc = FilterChain(i, ch.name, m, view, tls)
        if i >= 0:
            lc.chains.append(fc)
        else:
            lc.default = fc
    if scoped and len(entries) > 1:  # (rds: each chain's own, proxy/dynamic.py)
        raise UnsupportedConfig(
            f"{scoped[0]}: scoped_routes in one of several filter chains is not implemented "
            "by sofamesh (rds or an inline route_config is)"
        )
    if lst.HasField("filter_chain_matcher"):
        from sofamesh.proxy.chain_matcher import compile_chain_matcher

        lc.by_name = {c.name: c for c in lc.chains if c.name}
        lc.matcher = compile_chain_matcher(
            lst.filter_chain_matcher, set(lc.by_name), f"{path}.filter_chain_matcher"
        )
    elif len(lc.chains) == 1 and lc.default is None and lc.chains[0].match.trivial():
        lc.only = lc.chains[0]
    if any(c.match.needs() for c in lc.chains) and not (lc.inspect_tls or lc.inspect_http):
        log.info(
            "%s: filter chains match on server name / transport / ALPN but the listener has "
            "no tls_inspector: they match only plaintext connections without those",
            path,
        )
    return lc


def disabled_when(p: Any, path: str) -> Any:
    """A ListenerFilterChainMatchPredicate as (destination port) -> bool."""
    kind = p.WhichOneof("rule")
    if kind == "any_match":
        return lambda port: True
    if kind == "destination_port_range":
        lo, hi = p.destination_port_range.start, p.destination_port_range.end
        return lambda port: lo <= port < hi
    if kind == "not_match":
        inner = disabled_when(p.not_match, f"{path}.not_match")
        return lambda port: not inner(port)
    if kind in ("or_match", "and_match"):
        rules = [
            disabled_when(r, f"{path}.{kind}.rules[{i}]")
            for i, r in enumerate(getattr(p, kind).rules)
        ]
        if kind == "or_match":
            return lambda port: any(r(port) for r in rules)
        return lambda port: all(r(port) for r in rules)
    raise UnsupportedConfig(f"{path}: a predicate ({kind}) not implemented by sofamesh")


def _hcm_scoped(ch: Any) -> bool:
    from sofamesh.config import protos

    if not ch.filters:
        return False
    hcm = protos.unpack_any(ch.filters[-1].typed_config)
    return hcm is not None and hasattr(hcm, "scoped_routes") and hcm.HasField("scoped_routes")


def _check_tls_inspector(f: Any, path: str) -> None:
    if not f.HasField("typed_config"):
        return
    from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

    m = tls_inspector_pb2.TlsInspector()
    f.typed_config.Unpack(m)
    for fd, _ in m.ListFields():
        raise UnsupportedConfig(
            f"{path}.typed_config.{fd.name}: TlsInspector.{fd.name} is not implemented by sofamesh"
        )
