"""Envoy's access log formats (envoy.config.core.v3.SubstitutionFormatString): `%COMMAND%`
text and JSON formats, compiled once at config load into pieces (literals and prepared
getters), so a logged request costs one loop over the pieces.

Grammar (Envoy's): `%COMMAND%`, `%COMMAND(ARG)%`, `%COMMAND(ARG):N%` (value cut to N
characters), `%%` (a percent sign). A command Envoy does not know, or one sofamesh does not
implement, is refused by name at load. A value sofamesh does not know comes out as Envoy
writes an absent value: `-` in text (empty with `omit_empty_values`), `null` in JSON (the key
left out with `omit_empty_values`); a format that is one command alone keeps the command's
type in JSON (numbers stay numbers), as Envoy's typed JSON values do.

Getters take (stream, duration_ms, start_ns) for HTTP and (entry, duration_ms, start_ns) for
tcp_proxy, whose entry is rpc_tcp.TcpDownstream.log_entry(); they return str, int or None.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from sofamesh._core import log_fields as F
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.filter_state import joined, local_uri_sans, peer_uri_sans

Getter = Callable[[Any, float, int], Any]

# Envoy's default access log format (text)
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")

# Envoy's response flags, short and long names, in Envoy's order
LONG_FLAGS = {
    "UH": "NoHealthyUpstream",
    "UF": "UpstreamConnectionFailure",
    "UO": "UpstreamOverflow",
    "NR": "NoRouteFound",
    "URX": "UpstreamRetryLimitExceeded",
    "NC": "NoClusterFound",
    "DT": "DurationTimeout",
    "DC": "DownstreamConnectionTermination",
    "LH": "FailedLocalHealthCheck",
    "UT": "UpstreamRequestTimeout",
    "LR": "LocalReset",
    "UR": "UpstreamRemoteReset",
    "UC": "UpstreamConnectionTermination",
    "DI": "DelayInjected",
    "FI": "FaultInjected",
    "RL": "RateLimited",
    "UAEX": "UnauthorizedExternalService",
    "RLSE": "RateLimitServiceError",
    "IH": "InvalidEnvoyRequestHeaders",
    "SI": "StreamIdleTimeout",
    "DPE": "DownstreamProtocolError",
    "UPE": "UpstreamProtocolError",
    "UMSDR": "UpstreamMaxStreamDurationReached",
    "OM": "OverloadManagerTerminated",
    "DF": "DnsResolutionFailed",
    "DO": "DropOverload",
    "DR": "DownstreamRemoteReset",
    "UDO": "UnconditionalDropOverload",
    "RFCF": "ResponseFromCacheFilter",
    "NFCF": "NoFilterConfigFound",
}

# RESPONSE_CODE_DETAILS that sofamesh knows for certain from a stream's outcome; anything
# else (a filter's own reply, a reset's detail) is written "-" rather than guessed
_DETAILS_BY_FLAG = {
    "NR": "route_not_found",
    "NC": "cluster_not_found",
    "UH": "no_healthy_upstream",
    "UT": "response_timeout",
}

# commands Envoy 1.40 accepts that sofamesh does not evaluate: refused by name
NOT_IMPLEMENTED = frozenset(
    {
        "DYNAMIC_METADATA",
        "CLUSTER_METADATA",
        "UPSTREAM_METADATA",
        "FILTER_STATE",
        "UPSTREAM_FILTER_STATE",
        "DOWNSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_LOCAL_SUBJECT",
        "DOWNSTREAM_PEER_ISSUER",
        "DOWNSTREAM_TLS_SESSION_ID",
        "DOWNSTREAM_TLS_CIPHER",
        "DOWNSTREAM_TLS_VERSION",
        "DOWNSTREAM_PEER_FINGERPRINT_256",
        "DOWNSTREAM_PEER_FINGERPRINT_1",
        "DOWNSTREAM_PEER_SERIAL",
        "DOWNSTREAM_PEER_CERT",
        "DOWNSTREAM_PEER_CERT_V_START",
        "DOWNSTREAM_PEER_CERT_V_END",
        "UPSTREAM_PEER_URI_SAN",
        "UPSTREAM_PEER_SUBJECT",
        "UPSTREAM_TLS_VERSION",
        "UPSTREAM_TLS_CIPHER",
        "REQ_WITHOUT_QUERY",
        "METADATA",
        "CEL",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "REQUEST_HEADERS_BYTES",
        "RESPONSE_HEADERS_BYTES",
        "RESPONSE_TRAILERS_BYTES",
        "UPSTREAM_WIRE_BYTES_SENT",
        "UPSTREAM_WIRE_BYTES_RECEIVED",
        "DOWNSTREAM_WIRE_BYTES_SENT",
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "UPSTREAM_HEADER_BYTES_SENT",
        "UPSTREAM_HEADER_BYTES_RECEIVED",
        "DOWNSTREAM_HEADER_BYTES_SENT",
        "DOWNSTREAM_HEADER_BYTES_RECEIVED",
        "REQUEST_TX_DURATION",
        "ROUNDTRIP_DURATION",
        "UPSTREAM_CONNECTION_ID",
        "STREAM_ID",
        "UNIQUE_ID",
        "VIRTUAL_CLUSTER_NAME",
        "UPSTREAM_REMOTE_PORT",
        "UPSTREAM_LOCAL_PORT",
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_PORT",
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
        "DOWNSTREAM_HANDSHAKE_DURATION",
        "UPSTREAM_HANDSHAKE_DURATION",
        "COMMON_DURATION",
        "TRACE_ID",
        "QUERY_PARAM",
        "PATH",
        "CUSTOM_FLAGS",
        "UPSTREAM_PROTOCOL",
        "LOCAL_REPLY_BODY",
        "ACCESS_LOG_TYPE",
        "UPSTREAM_DETECTED_CLOSE_TYPE",
        "DOWNSTREAM_DETECTED_CLOSE_TYPE",
    }
)


def _addr(a: Any) -> str | None:
    if not a:
        return None
    ip, port = a[0], a[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _wire(text: str) -> str:
    """Config text (a format's literals, JSON keys, environment values) as the str whose
    latin-1 encoding, what the loggers write, is its UTF-8 bytes: header values are bytes
    decoded as latin-1, so one encoding serves both, as Envoy writes both as bytes."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _str(v: bytes | None) -> str | None:
    return v.decode("latin-1") if v else None


# ---- START_TIME --------------------------------------------------------------------------

_TIME_SPECIAL = re.compile(r"%([1-9]?)f|%s|%E([1-9*])S")


def start_time_getter(fmt: str) -> Getter:
    """START_TIME(fmt): strftime in UTC plus Envoy's %f / %Nf (fraction of a second to N
    digits, 9 for %f), %s (seconds since the epoch) and %EnS (seconds with n digits)."""
    if not fmt:
        cache: list = [-1, ""]

        def default(x: Any, ms: float, ns: int) -> str:
            sec = ns // 1_000_000_000
            if sec != cache[0]:
                cache[0] = sec
                cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            return f"{cache[1]}.{ns // 1_000_000 % 1000:03d}Z"

        return default
    pieces: list = []  # str: a strftime format; tuple: a special
    pos = 0
    for m in _TIME_SPECIAL.finditer(fmt):
        if m.start() > pos:
            pieces.append(fmt[pos : m.start()])
        tok = m.group(0)
        if tok == "%s":
            pieces.append(("s", 0))
        elif tok.endswith("f"):
            pieces.append(("f", int(m.group(1) or 9)))
        else:
            n = m.group(2)
            pieces.append(("S", 9 if n == "*" else int(n)))
        pos = m.end()
    if pos < len(fmt):
        pieces.append(fmt[pos:])

    def custom(x: Any, ms: float, ns: int) -> str:
        sec, frac = divmod(ns, 1_000_000_000)
        tm = time.gmtime(sec)
        out = []
        for p in pieces:
            if p.__class__ is str:
                out.append(time.strftime(p, tm))
            elif p[0] == "s":
                out.append(str(sec))
            elif p[0] == "f":
                out.append(f"{frac:09d}"[: p[1]])
            else:
                out.append(f"{tm.tm_sec:02d}.{frac:09d}"[: 3 + p[1]])
        return "".join(out)

    return custom


# ---- HTTP operators ----------------------------------------------------------------------


def _http_header(fetch: Callable[[Any, bytes], Any], arg: str, op: str, path: str) -> Getter:
    if not arg:
        raise UnsupportedConfig(f"{path}: {op} requires parameters (Envoy: {op}(HEADER))")
    names = [n.strip().lower().encode("latin-1") for n in arg.split("?")]
    if len(names) > 2:
        raise UnsupportedConfig(f"{path}: {op}({arg}): at most one alternative header")
    if op == "REQ" and names[-1] == b"x-request-id" and len(names) == 1:

        def request_id(s: Any, ms: float, ns: int) -> Any:
            return _str(fetch(s, b"x-request-id") or s.request_id)

        return request_id
    if op == "RESP" and names == [b"x-envoy-upstream-service-time"]:

        def service_time(s: Any, ms: float, ns: int) -> Any:
            st = s.service_ms
            return str(st) if st >= 0 else None

        return service_time
    if len(names) == 1:
        name = names[0]
        return lambda s, ms, ns: _str(fetch(s, name))
    a, b = names

    def alt(s: Any, ms: float, ns: int) -> Any:
        return _str(fetch(s, a) or fetch(s, b))

    return alt


def _details(s: Any, ms: float, ns: int) -> Any:
    flags = s.resp_flags
    if flags == "-":
        kind = F.route_kind(s)
        if kind == "direct":
            return "direct_response"
        if s.service_ms >= 0 and s.upstream_host != "-":
            return "via_upstream"
        return None
    return _DETAILS_BY_FLAG.get(flags)


def _request_duration(s: Any, ms: float, ns: int) -> Any:
    if s.resp_flags == "DPE":
        return None  # the request never parsed whole
    t0, sent, done = F.timings(s)
    if done and s.bytes_rx == 0:
        return 0  # a request without a body is whole when its head is
    if sent > 0:
        return int((sent - t0) * 1000)
    return None


def _response_duration(s: Any, ms: float, ns: int) -> Any:
    if s.service_ms < 0:
        return None
    t0, sent, _ = F.timings(s)
    return int((sent - t0) * 1000) + s.service_ms if sent > 0 else None


def _response_tx_duration(s: Any, ms: float, ns: int) -> Any:
    first = _response_duration(s, ms, ns)
    return None if first is None else max(int(ms) - first, 0)


def _local(s: Any) -> Any:
    return F.local_address(s)


_HOSTNAME = socket.gethostname()


def _original_client(s: Any) -> str | None:
    """Envoy's downstream remote address without use_remote_address: the last
    x-forwarded-for entry when it is an IP address (port 0), else None (the peer)."""
    if s.config.use_remote_address:
        return None
    xff = F.request_header(s, b"x-forwarded-for")
    if not xff:
        return None
    last = xff.rsplit(b",", 1)[-1].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None


def _http_simple() -> dict[str, Getter]:
    def flags_long(s: Any, ms: float, ns: int) -> str:
        f = s.resp_flags
        if f == "-":
            return "-"
        return ",".join(LONG_FLAGS.get(x, x) for x in f.split(","))

    def local_addr(s: Any, ms: float, ns: int) -> Any:
        return _addr(_local(s))

    def local_ip(s: Any, ms: float, ns: int) -> Any:
        a = _local(s)
        return a[0] if a else None

    def local_port(s: Any, ms: float, ns: int) -> Any:
        a = _local(s)
        return a[1] if a else None

    def remote(s: Any, ms: float, ns: int) -> Any:
        orig = _original_client(s)
        if orig is not None:
            return _addr((orig, 0))
        ip = s.remote_ip
        return _addr((ip.decode(), F.remote_port(s))) if ip else None

    def remote_ip(s: Any, ms: float, ns: int) -> Any:
        orig = _original_client(s)
        return orig if orig is not None else _str(s.remote_ip)

    def direct(s: Any, ms: float, ns: int) -> Any:
        ip = s.remote_ip
        return _addr((ip.decode(), F.remote_port(s))) if ip else None

    def direct_ip(s: Any, ms: float, ns: int) -> Any:
        return _str(s.remote_ip)

    def cluster(s: Any, ms: float, ns: int) -> Any:
        # Envoy's observability name: the cluster's alt_stat_name when it has one
        c = s.cluster
        if c is None:
            return None
        cfg = c.config
        return (cfg.alt_stat_name or c.name) if cfg is not None else c.name

    def cluster_raw(s: Any, ms: float, ns: int) -> Any:
        c = s.cluster
        return c.name if c is not None else None

    def route_name(s: Any, ms: float, ns: int) -> Any:
        r = s.route
        return (r.name or None) if r is not None else None

    return {
        "RESPONSE_CODE": lambda s, ms, ns: s.resp_status,
        "RESPONSE_FLAGS": lambda s, ms, ns: s.resp_flags,
        "RESPONSE_FLAGS_LONG": flags_long,
        "RESPONSE_CODE_DETAILS": _details,
        "BYTES_RECEIVED": lambda s, ms, ns: s.bytes_rx,
        "BYTES_SENT": lambda s, ms, ns: s.bytes_tx,
        "DURATION": lambda s, ms, ns: int(ms),
        "REQUEST_DURATION": _request_duration,
        "RESPONSE_DURATION": _response_duration,
        "RESPONSE_TX_DURATION": _response_tx_duration,
        "PROTOCOL": lambda s, ms, ns: s.protocol,
        "UPSTREAM_HOST": lambda s, ms, ns: None if s.upstream_host == "-" else s.upstream_host,
        "UPSTREAM_REMOTE_ADDRESS": lambda s, ms, ns: (
            None if s.upstream_host == "-" else s.upstream_host
        ),
        "UPSTREAM_CLUSTER": cluster,
        "UPSTREAM_CLUSTER_RAW": cluster_raw,
        "UPSTREAM_LOCAL_ADDRESS": lambda s, ms, ns: _addr(F.upstream_local(s)),
        "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda s, ms, ns: None,
        "CONNECTION_TERMINATION_DETAILS": lambda s, ms, ns: None,
        "DOWNSTREAM_REMOTE_ADDRESS": remote,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": remote_ip,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": direct,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": direct_ip,
        "DOWNSTREAM_LOCAL_ADDRESS": local_addr,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": local_ip,
        "DOWNSTREAM_LOCAL_PORT": local_port,
        "REQUESTED_SERVER_NAME": lambda s, ms, ns: F.requested_server_name(s),
        "DOWNSTREAM_PEER_URI_SAN": lambda s, ms, ns: joined(
            peer_uri_sans(F.downstream_transport(s))
        ),
        "DOWNSTREAM_LOCAL_URI_SAN": lambda s, ms, ns: joined(
            local_uri_sans(F.downstream_transport(s))
        ),
        "ROUTE_NAME": route_name,
        "HOSTNAME": lambda s, ms, ns: _HOSTNAME,
        "CONNECTION_ID": lambda s, ms, ns: F.connection_id(s),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda s, ms, ns: F.attempts(s),
    }


_HTTP = _http_simple()


# ---- tcp_proxy operators (entry: TcpDownstream.log_entry()) ------------------------------


def _tcp_simple() -> dict[str, Getter]:
    def ip(a: Any) -> Any:
        return a[0] if a else None

    return {
        "RESPONSE_CODE": lambda e, ms, ns: 0,
        "RESPONSE_FLAGS": lambda e, ms, ns: e[9] or "-",
        "RESPONSE_FLAGS_LONG": lambda e, ms, ns: (
            ",".join(LONG_FLAGS.get(x, x) for x in e[9].split(",")) if e[9] else "-"
        ),
        "RESPONSE_CODE_DETAILS": lambda e, ms, ns: None,
        "BYTES_RECEIVED": lambda e, ms, ns: e[7],
        "BYTES_SENT": lambda e, ms, ns: e[8],
        "DURATION": lambda e, ms, ns: int(ms),
        "REQUEST_DURATION": lambda e, ms, ns: None,
        "RESPONSE_DURATION": lambda e, ms, ns: None,
        "RESPONSE_TX_DURATION": lambda e, ms, ns: None,
        "PROTOCOL": lambda e, ms, ns: None,
        "UPSTREAM_HOST": lambda e, ms, ns: _addr(e[4]),
        "UPSTREAM_REMOTE_ADDRESS": lambda e, ms, ns: _addr(e[4]),
        "UPSTREAM_CLUSTER": lambda e, ms, ns: e[6],
        "UPSTREAM_CLUSTER_RAW": lambda e, ms, ns: e[6],
        "UPSTREAM_LOCAL_ADDRESS": lambda e, ms, ns: _addr(e[5]),
        "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda e, ms, ns: (
            e[10].replace(" ", "_") if e[10] else None
        ),
        "CONNECTION_TERMINATION_DETAILS": lambda e, ms, ns: None,
        "DOWNSTREAM_REMOTE_ADDRESS": lambda e, ms, ns: _addr(e[2]),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda e, ms, ns: ip(e[2]),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda e, ms, ns: _addr(e[2]),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda e, ms, ns: ip(e[2]),
        "DOWNSTREAM_LOCAL_ADDRESS": lambda e, ms, ns: _addr(e[3]),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda e, ms, ns: ip(e[3]),
        "DOWNSTREAM_LOCAL_PORT": lambda e, ms, ns: e[3][1] if e[3] else None,
        "REQUESTED_SERVER_NAME": lambda e, ms, ns: None,
        "ROUTE_NAME": lambda e, ms, ns: None,
        "HOSTNAME": lambda e, ms, ns: _HOSTNAME,
        "CONNECTION_ID": lambda e, ms, ns: None,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda e, ms, ns: None,
    }


_TCP = _tcp_simple()

# commands whose value is a number in JSON (typed values)
_NUMERIC = frozenset(
    {
        "RESPONSE_CODE",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "DOWNSTREAM_LOCAL_PORT",
        "CONNECTION_ID",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    }
)
# commands that need the response kept (log_fields.ResponseCapture on the HCM)
_CAPTURE = frozenset({"TRAILER", "UPSTREAM_LOCAL_ADDRESS"})


# evaluated for HTTP streams, not yet for tcp_proxy's log entries: refused there by name
_HTTP_ONLY = frozenset({"DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_LOCAL_URI_SAN"})


class _Compiler:
    def __init__(self, tcp: bool, path: str) -> None:
        self.tcp = tcp
        self.path = path
        self.capture = False

    def command(self, op: str, arg: str | None, limit: int | None) -> Getter:
        path = self.path
        if op in NOT_IMPLEMENTED or (self.tcp and op in _HTTP_ONLY):
            raise UnsupportedConfig(
                f"{path}: access log command %{op}% is not implemented by sofamesh"
            )
        g: Getter
        if op == "START_TIME":
            g = start_time_getter(arg or "")
        elif op == "ENVIRONMENT":
            if not arg:
                raise UnsupportedConfig(f"{path}: ENVIRONMENT requires parameters")
            v = _wire(os.environ.get(arg, "-"))  # read once, as Envoy does at load
            if limit is not None:
                v = v[:limit]
            return lambda x, ms, ns: v
        elif op in ("REQ", "RESP", "TRAILER"):
            if self.tcp:
                if not arg:
                    raise UnsupportedConfig(f"{path}: {op} requires parameters")
                g = _none
            else:
                fetch = {
                    "REQ": F.request_header,
                    "RESP": F.response_header,
                    "TRAILER": F.response_trailer,
                }[op]
                g = _http_header(fetch, arg or "", op, path)
                svc = (arg or "").strip().lower() == "x-envoy-upstream-service-time"
                if op == "TRAILER" or (op == "RESP" and not svc):
                    self.capture = True
        else:
            table = _TCP if self.tcp else _HTTP
            got = table.get(op)
            if got is None:
                raise UnsupportedConfig(
                    f"{path}: unknown access log command %{op}% "
                    f"(Envoy: Not supported field in StreamInfo: {op})"
                )
            if arg is not None and op not in ("START_TIME",):
                raise UnsupportedConfig(f"{path}: %{op}% takes no parameters")
            if op in _CAPTURE and not self.tcp:
                self.capture = True
            g = got
        if limit is not None:
            return _cut(g, limit)
        return g

    def text(self, fmt: str) -> list:
        """pieces of one format string: str literals and (getter, numeric) commands."""
        pieces: list = []
        lit: list[str] = []
        i, n = 0, len(fmt)
        while i < n:
            j = fmt.find("%", i)
            if j < 0:
                lit.append(fmt[i:])
                break
            lit.append(fmt[i:j])
            if fmt.startswith("%%", j):
                lit.append("%")
                i = j + 2
                continue
            m = _COMMAND.match(fmt, j)
            if m is None:
                raise UnsupportedConfig(
                    f"{self.path}: incorrect access log format {fmt!r}: no valid command at "
                    f"position {j}"
                )
            if lit:
                joined = "".join(lit)
                if joined:
                    pieces.append(_wire(joined))
                lit = []
            op = m.group(1)
            limit = int(m.group(3)) if m.group(3) else None
            pieces.append((self.command(op, m.group(2), limit), op in _NUMERIC))
            i = m.end()
        if lit and "".join(lit):
            pieces.append(_wire("".join(lit)))
        return pieces


def _none(x: Any, ms: float, ns: int) -> None:
    return None


def _cut(g: Getter, n: int) -> Getter:
    def cut(x: Any, ms: float, ns: int) -> Any:
        v = g(x, ms, ns)
        return v[:n] if v.__class__ is str else v

    return cut


class TextFormat:
    """A compiled text format: `format(x, ms, ns)` is one line. The literals become one
    str.format template with a `{}` per command, so a line is one list of the getters'
    values and one C-level format call. Getters give None, never "", for an absent value.
    PERF: ~2x faster than a loop over literal and command pieces (timeit, 11 commands)."""

    def __init__(self, pieces: list, omit_empty: bool) -> None:
        parts: list[str] = []
        getters: list = []
        for p in pieces:
            if p.__class__ is str:
                parts.append(p.replace("{", "{{").replace("}", "}}"))
            else:
                parts.append("{}")
                getters.append(p[0])
        self.template = "".join(parts)
        self.getters: tuple[Any, ...] = tuple(getters)
        self.empty = "" if omit_empty else "-"

    def format(self, x: Any, ms: float, ns: int) -> str:
        e = self.empty
        vals = [g(x, ms, ns) for g in self.getters]
        return self.template.format(*[e if v is None else v for v in vals])


class JsonFormat:
    """A compiled json_format: keys sorted (Envoy writes a Struct's keys in order), one JSON
    object per line."""

    def __init__(self, tree: Any, omit_empty: bool) -> None:
        self.tree = tree
        self.omit = omit_empty

    def _value(self, node: Any, x: Any, ms: float, ns: int) -> Any:
        kind, val = node
        if kind == "lit":
            return val
        if kind == "one":
            v = val(x, ms, ns)
            return None if v == "" else v
        if kind == "str":
            out = []
            empty = "" if self.omit else "-"
            for p in val:
                if p.__class__ is str:
                    out.append(p)
                else:
                    v = p(x, ms, ns)
                    out.append(empty if v is None or v == "" else str(v))
            return "".join(out)
        if kind == "list":
            return [self._value(n, x, ms, ns) for n in val]
        obj = {}
        for k, n in val:
            v = self._value(n, x, ms, ns)
            if v is None and self.omit:
                continue
            obj[k] = v
        return obj

    def format(self, x: Any, ms: float, ns: int) -> str:
        obj = self._value(self.tree, x, ms, ns)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


def _json_tree(c: _Compiler, value: Any) -> Any:
    """A google.protobuf.Value / Struct compiled into ("lit"|"one"|"str"|"list"|"obj", ...)."""
    from google.protobuf import struct_pb2

    if isinstance(value, struct_pb2.Struct):
        return (
            "obj",
            [(_wire(k), _json_tree(c, value.fields[k])) for k in sorted(value.fields)],
        )
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _json_tree(c, value.struct_value)
    if kind == "list_value":
        return ("list", [_json_tree(c, v) for v in value.list_value.values])
    if kind == "string_value":
        pieces = c.text(value.string_value)
        if len(pieces) == 1 and pieces[0].__class__ is not str:
            return ("one", pieces[0][0])
        if all(p.__class__ is str for p in pieces):
            return ("lit", "".join(pieces))
        return ("str", tuple(p if p.__class__ is str else p[0] for p in pieces))
    if kind == "number_value":
        v = value.number_value
        return ("lit", int(v) if v.is_integer() else v)
    if kind == "bool_value":
        return ("lit", value.bool_value)
    return ("lit", None)


class Compiled:
    """What a logger writes: `format(x, ms, ns)`; `capture`: the HCM must keep the response
    (log_fields.ResponseCapture)."""

    def __init__(self, fmt: TextFormat | JsonFormat, capture: bool) -> None:
        self.fmt = fmt
        self.format = fmt.format
        self.capture = capture


def compile_text(fmt: str, path: str, tcp: bool = False, omit_empty: bool = False) -> Compiled:
    c = _Compiler(tcp, path)
    return Compiled(TextFormat(c.text(fmt), omit_empty), c.capture)


def compile_json(struct: Any, path: str, tcp: bool = False, omit_empty: bool = False) -> Compiled:
    c = _Compiler(tcp, path)
    return Compiled(JsonFormat(_json_tree(c, struct), omit_empty), c.capture)


def compile_substitution(sfs: Any, path: str, tcp: bool = False) -> Compiled:
    """envoy.config.core.v3.SubstitutionFormatString."""
    if len(sfs.formatters):
        names = ", ".join(f.name for f in sfs.formatters)
        raise UnsupportedConfig(
            f"{path}.formatters: formatter extensions ({names}) are not implemented by sofamesh"
        )
    omit = sfs.omit_empty_values
    kind = sfs.WhichOneof("format")
    if kind == "text_format":
        return compile_text(sfs.text_format, path + ".text_format", tcp, omit)
    if kind == "text_format_source":
        src = sfs.text_format_source
        sk = src.WhichOneof("specifier")
        if sk == "inline_string":
            text = src.inline_string
        elif sk == "inline_bytes":
            text = src.inline_bytes.decode("utf-8", "replace")
        elif sk == "filename":
            try:
                with open(src.filename, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise UnsupportedConfig(
                    f"{path}.text_format_source.filename: cannot read {src.filename}: {e}"
                ) from None
        else:
            raise UnsupportedConfig(
                f"{path}.text_format_source: {sk or 'no source'} is not supported "
                "(inline_string, inline_bytes and filename are)"
            )
        return compile_text(text, path + ".text_format_source", tcp, omit)
    if kind == "json_format":
        return compile_json(sfs.json_format, path + ".json_format", tcp, omit)
    # no format: Envoy's default line
    return compile_text(DEFAULT_FORMAT, path, tcp, omit)
