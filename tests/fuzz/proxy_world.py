"""The proxy that tests/fuzz/proxy_campaign.py fuzzes: one `sofamesh proxy --concurrency 1`
with a listener of every kind sofamesh serves, each with a working upstream, and what the
fuzzer needs to know of each: the seeds it is fed, the good request that must still be
answered, the counters that count its connections and its bad input.

Listeners: an HTTP/1.1 HCM with codec AUTO (HTTP/2 prior knowledge arrives there too), an
HTTP/2-only HCM, an HCM behind downstream TLS on a tls_inspector listener, tcp_proxy
(sofamesh carries HSF as opaque TCP: the HSF corpus goes there), the Dubbo and Bolt proxies,
the Auto sniffing listener (HTTP, Bolt and Dubbo on one port), and admin. Upstreams: the
recording HTTP/1.1 server of tests/support, a TCP echo, and Bolt and Dubbo servers with
their own frame reader answering the captured frames of tests/fixtures/protocols.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.conftest import ROOT, free_port, sofamesh_command
from tests.support import h2raw
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.tcp_echo import EchoHandler, ThreadedServer


class _QuietEcho(EchoHandler):
    """The echo, without a traceback on stderr for each client the proxy resets."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            super().handle()


HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
GOLDEN = ROOT / "tests" / "fixtures" / "protocols"  # provenance: tests/fixtures/protocols/README.md

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DUBBO = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
BOLT = "type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy"
AUTO = "type.googleapis.com/sofamesh.filters.network.auto.v1.Auto"
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)

# What the proxy's log must never show: an exception that escaped a protocol callback, or
# one its own safety nets caught (they log "internal error").
LOG_BAD = re.compile(r"Traceback|Exception in callback|unhandled|internal error|Fatal error")


# -- seeds ---------------------------------------------------------------------------------


def _files(d: Path, skip: int) -> list[bytes]:
    """A corpus directory's inputs; `skip`: the atheris harness's option bytes in front."""
    out = [p.read_bytes()[skip:] for p in sorted(d.iterdir()) if p.is_file()]
    return [b for b in out if b]


def _golden(prefix: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(GOLDEN.glob(f"{prefix}*.bin"))]


BOLT_REQ = (GOLDEN / "bolt_py_1.bin").read_bytes()  # request, id 109, SampleServicePb:1.0
BOLT_RESP = (GOLDEN / "bolt_py_0.bin").read_bytes()  # response (codec 11), what the upstream says
BOLT_SERVICE = "com.alipay.rpc.common.service.facade.pb.SampleServicePb:1.0"
DUBBO_REQ = (GOLDEN / "dubbo_benchmarkData.bin").read_bytes()  # request, id 76
DUBBO_SERVICES = (
    "com.raycloud.notify.api.service.NotifyJobRequest",
    "com.dmall.dsf.zone.proxy.service.ProxyInterface",
)
DUBBO_VALUE = b"\x91\x02ok"  # Hessian2: RESPONSE_VALUE (int 1), then the string "ok"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

GOOD_H1 = [
    b"GET /fuzz/seed HTTP/1.1\r\nhost: fuzz\r\nuser-agent: t\r\n\r\n",
    b"POST /fuzz/sink HTTP/1.1\r\nhost: fuzz\r\ncontent-length: 5\r\n\r\nhello",
    (
        b"POST /fuzz/sink HTTP/1.1\r\nhost: fuzz\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    b"GET /a HTTP/1.1\r\nhost: fuzz\r\n\r\nGET /b HTTP/1.1\r\nhost: fuzz\r\n\r\n",
    b"GET /fuzz/ws HTTP/1.1\r\nhost: fuzz\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
]


def _h2_session(paths: list[str]) -> bytes:
    """A client session (preface, SETTINGS, requests) built with h2raw's independent encoder."""
    import hpack

    enc = hpack.Encoder()
    out = [H2_PREFACE, h2raw.settings((h2raw.S_INITIAL_WINDOW_SIZE, 65535))]
    for i, p in enumerate(paths):
        block = enc.encode(h2raw.req(path=p, authority="fuzz"))
        out.append(h2raw.headers(1 + 2 * i, block))
    return b"".join(out)


def http1_seeds() -> list[bytes]:
    return GOOD_H1 + _files(CORPUS / "http1", 0) + _files(CORPUS / "http1_head", 3)[:40]


def http2_seeds() -> list[bytes]:
    return _files(CORPUS / "http2", 0) + [_h2_session(["/fuzz/h2a", "/fuzz/h2b"])]


def bolt_seeds() -> list[bytes]:
    return [
        BOLT_REQ,
        *_golden("bolt"),
        *[p.read_bytes() for p in sorted(CORPUS.glob("bolt_*.bin"))],
        *_files(CORPUS / "bolt", 3),
    ]


def dubbo_seeds() -> list[bytes]:
    return [
        DUBBO_REQ,
        *_golden("dubbo"),
        (CORPUS / "dubbo_heartbeat.bin").read_bytes(),
        *_files(CORPUS / "dubbo", 3),
    ]


def hsf_seeds() -> list[bytes]:
    return [
        *_golden("hsf"),
        (CORPUS / "hsf_heartbeat.bin").read_bytes(),
        *_files(CORPUS / "hsf", 3),
    ]


def client_hellos() -> list[bytes]:
    """TLS ClientHellos as Python's ssl sends them (ALPN h2, http/1.1), for the TLS listener."""
    out = []
    for alpn in ("h2", "http/1.1"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        out.append(outgoing.read())
    return out


ADMIN_SEEDS = [
    b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /stats?filter=^http HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /server_info HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /clusters?format=json HTTP/1.1\r\nhost: a\r\n\r\n",
    b"HEAD /listeners HTTP/1.0\r\n\r\n",
    b"GET /stats/prometheus HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc",
]


# -- the upstreams -------------------------------------------------------------------------


class FrameUpstream:
    """A threaded Bolt or Dubbo server on 127.0.0.1:0 that reads frames by their length
    fields (its own reader, not sofamesh's) and answers every two-way request: Bolt with
    the captured response bolt_py_0.bin under the request's id, Dubbo with DUBBO_VALUE.
    Anything it cannot read closes the connection."""

    def __init__(self, proto: str):
        self.proto = proto
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._sock.close()
        with self._lock:
            for c in self._conns:
                c.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
                while True:
                    frame = self._frame(buf)
                    if frame is None:
                        break
                    if frame < 0:
                        return
                    reply = self._reply(buf[:frame])
                    buf = buf[frame:]
                    if reply:
                        with self._lock:
                            self.requests += 1
                        c.sendall(reply)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(c)
            c.close()

    def _frame(self, b: bytes) -> int | None:
        """The first frame's length, None for more bytes, -1 for bytes that are no frame."""
        if self.proto == "dubbo":
            if len(b) < 16:
                return None
            if b[:2] != b"\xda\xbb":
                return -1
            n = 16 + struct.unpack(">I", b[12:16])[0]
        elif b[:1] == b"\x01":
            if len(b) < 22:
                return None
            cls, hdr, body = struct.unpack(">HHI", b[14:22])
            n = 22 + cls + hdr + body
        elif b[:1] == b"\x02":
            if len(b) < 24:
                return None
            cls, hdr, body = struct.unpack(">HHI", b[16:24])
            n = 24 + cls + hdr + body + (4 if b[11] & 1 else 0)
        else:
            return -1 if b else None
        if n > 1 << 24:
            return -1
        return n if len(b) >= n else None

    def _reply(self, f: bytes) -> bytes:
        if self.proto == "dubbo":
            flag = f[2]
            if not flag & 0x80 or not flag & 0x40:
                return b""  # a response, or one-way
            body = b"N" if flag & 0x20 else DUBBO_VALUE
            head = b"\xda\xbb" + bytes([(flag & 0x1F) | (flag & 0x20), 20]) + f[4:12]
            return head + struct.pack(">I", len(body)) + body
        if f[0] == 1:
            kind, cmd, rid = f[1], struct.unpack(">H", f[2:4])[0], f[5:9]
        else:
            kind, cmd, rid = f[2], struct.unpack(">H", f[3:5])[0], f[6:10]
        if kind != 1:
            return b""  # a response or one-way
        if cmd == 0:  # heartbeat: its ack, no content
            return b"\x01\x00\x00\x00\x01" + rid + b"\x01\x00\x00" + b"\x00" * 8
        return BOLT_RESP[:5] + rid + BOLT_RESP[9:]


# -- one listener: its inputs, its good request, its counters ---------------------------------


@dataclass
class Target:
    name: str
    port: int
    kind: str  # which family of inputs: http1, http2, tls, tcp, bolt, dubbo, auto, admin
    seeds: list[bytes]
    good: Callable[[], None]  # raises AssertionError unless a good request is answered right
    cx: list[str]  # counters that count every connection (their sum)
    errors: list[str]  # counters of bad input: their sum must grow with each batch
    len_offsets: tuple[int, ...] = ()
    prefixes: tuple[bytes, ...] = ()
    sent: int = 0
    modes: dict[str, int] = field(default_factory=dict)


class ProxyWorld:
    """The proxy with every listener and its upstreams (a context manager)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._stack = contextlib.ExitStack()
        self.targets: dict[str, Target] = {}
        self.proxy: ProxyProcess | None = None
        self.stats_reads = 0
        self.log_seen = 0

    # lifecycle
    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        st = self._stack
        self.http = st.enter_context(RecordingUpstream(("up",)))
        echo = ThreadedServer(("127.0.0.1", 0), _QuietEcho)
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        st.callback(echo.server_close)
        st.callback(echo.shutdown)
        self.echo_port = echo.server_address[1]
        self.bolt_up = st.enter_context(FrameUpstream("bolt"))
        self.dubbo_up = st.enter_context(FrameUpstream("dubbo"))
        ca = make_ca("fuzz CA")
        leaf = make_leaf(ca, cn="localhost")
        self.ca_pem = ca.cert_pem
        self.client_tls = ssl.create_default_context(cadata=ca.cert_pem.decode())
        self.client_tls.check_hostname = True
        ports = {n: free_port() for n in ("h1", "h2", "tls", "tcp", "bolt", "dubbo", "auto")}
        self.ports = ports
        admin = free_port()
        self.admin_port = admin
        boot = {
            "admin": {"address": _addr(admin)},
            "static_resources": {
                "listeners": [
                    _listener("h1", ports["h1"], [_hcm("h1", "AUTO")]),
                    _listener("h2", ports["h2"], [_hcm("h2", "HTTP2")]),
                    {
                        **_listener("tls", ports["tls"], [_hcm("tls", "AUTO")]),
                        "listener_filters": [
                            {
                                "name": "envoy.filters.listener.tls_inspector",
                                "typed_config": {"@type": TLS_INSPECTOR},
                            }
                        ],
                        "filter_chains": [
                            {
                                "filter_chain_match": {"transport_protocol": "tls"},
                                "transport_socket": _tls(leaf.cert_pem, leaf.key_pem),
                                "filters": [_hcm("tls", "AUTO")],
                            }
                        ],
                    },
                    _listener("tcp", ports["tcp"], [_tcp("tcp")]),
                    _listener("bolt", ports["bolt"], [_bolt("bolt")]),
                    _listener("dubbo", ports["dubbo"], [_dubbo("dubbo")]),
                    _listener(
                        "auto",
                        ports["auto"],
                        [
                            {
                                "name": "sofamesh.filters.network.auto",
                                "typed_config": {
                                    "@type": AUTO,
                                    "filters": [
                                        _hcm("auto_http", "AUTO"),
                                        _bolt("auto_bolt"),
                                        _dubbo("auto_dubbo"),
                                    ],
                                },
                            }
                        ],
                    ),
                ],
                "clusters": [
                    _cluster("http_up", self.http.ports["up"]),
                    _cluster("echo", echo.server_address[1]),
                    _cluster("bolt_up", self.bolt_up.port),
                    _cluster("dubbo_up", self.dubbo_up.port),
                ],
            },
        }
        self.proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, self.workdir)
        st.enter_context(self.proxy)
        self.pid = self.proxy.pid
        h1, h2 = http1_seeds(), http2_seeds()
        bolt_len = (14, 16, 18, 16 + 2, 20)  # v1 class/header/content, v2 header/content
        dubbo_len = (12,)
        t = self.targets
        t["h1"] = Target(
            "h1",
            ports["h1"],
            "http1",
            h1 + h2,
            lambda: self.good_http("h1"),
            ["http.h1.downstream_cx_total"],
            _hcm_errors("h1"),
            prefixes=(b"GET / HTTP/1.1\r\n", H2_PREFACE),
        )
        t["h2"] = Target(
            "h2",
            ports["h2"],
            "http2",
            h2,
            lambda: self.good_h2("h2"),
            ["http.h2.downstream_cx_total"],
            _hcm_errors("h2"),
            prefixes=(H2_PREFACE,),
        )
        t["tls"] = Target(
            "tls",
            ports["tls"],
            "tls",
            h1 + h2 + client_hellos(),
            lambda: self.good_http("tls", tls=True),
            ["tls_inspector.tls_found", "tls_inspector.tls_not_found"],
            [
                "listener.tls.no_filter_chain_match",
                "listener.tls.ssl.connection_error",
                *_hcm_errors("tls"),
            ],
            len_offsets=(3, 6, 7, 43, 44),  # record length, handshake length, session id...
            prefixes=(b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x01"),
        )
        t["tcp"] = Target(
            "tcp",
            ports["tcp"],
            "tcp",
            hsf_seeds() + h1[:3],
            lambda: self.good_tcp(),
            ["tcp.tcp.downstream_cx_total"],
            [],  # every byte is valid on tcp_proxy: no error to count, rx bytes are
            len_offsets=(2, 10, 12),
        )
        t["bolt"] = Target(
            "bolt",
            ports["bolt"],
            "bolt",
            bolt_seeds(),
            lambda: self.good_bolt("bolt"),
            ["bolt.bolt.cx_total"],
            ["bolt.bolt.request_decoding_error"],
            len_offsets=bolt_len,
            prefixes=(b"\x01\x01\x00\x01", b"\x02\x01\x01\x00\x01"),
        )
        t["dubbo"] = Target(
            "dubbo",
            ports["dubbo"],
            "dubbo",
            dubbo_seeds(),
            lambda: self.good_dubbo("dubbo"),
            ["dubbo.dubbo.cx_total"],
            ["dubbo.dubbo.request_decoding_error"],
            len_offsets=dubbo_len,
            prefixes=(b"\xda\xbb\xc2\x00", b"\xda\xbb"),
        )
        t["auto"] = Target(
            "auto",
            ports["auto"],
            "auto",
            h1 + bolt_seeds() + dubbo_seeds(),
            self.good_auto,
            [
                "http.auto_http.downstream_cx_total",
                "bolt.auto_bolt.cx_total",
                "dubbo.auto_dubbo.cx_total",
            ],
            [
                *_hcm_errors("auto_http"),
                "bolt.auto_bolt.request_decoding_error",
                "dubbo.auto_dubbo.request_decoding_error",
            ],
            len_offsets=(12, 14, 16, 18),
            prefixes=(b"\xda\xbb", b"\x01\x01\x00\x01", b"GET / HTTP/1.1\r\n"),
        )
        t["admin"] = Target(
            "admin",
            admin,
            "admin",
            ADMIN_SEEDS + GOOD_H1[:2],
            self.good_admin,
            ["http.admin.downstream_cx_total"],
            ["http.admin.downstream_rq_rx_reset", "http.admin.downstream_rq_4xx"],
            prefixes=(b"GET /", b"POST /stats?"),
        )

    # -- the process --------------------------------------------------------------------
    def alive(self) -> bool:
        assert self.proxy is not None and self.proxy.proc is not None
        return self.proxy.proc.poll() is None

    def log(self) -> str:
        assert self.proxy is not None
        try:
            return self.proxy.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def bad_log_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if LOG_BAD.search(line)]

    def new_log(self) -> str:
        """What the proxy logged since the last call."""
        assert self.proxy is not None
        try:
            with open(self.proxy.log_path, "rb") as f:
                f.seek(self.log_seen)
                new = f.read()
        except OSError:
            return ""
        self.log_seen += len(new)
        return new.decode(errors="replace")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def _sockets(self) -> tuple[list[str], list[tuple[int, int, str]], int]:
        """The proxy's descriptors other than sockets (their targets), its TCP sockets
        [(local port, remote port, state)], and how many sockets are in no TCP table
        (unix sockets, or TCP ones being closed)."""
        files, inodes = [], set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                link = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
            else:
                files.append(link)
        tcp = []
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{self.pid}/net/{table}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[9] in inodes:
                        inodes.discard(parts[9])
                        local = int(parts[1].rsplit(":", 1)[1], 16)
                        remote = int(parts[2].rsplit(":", 1)[1], 16)
                        tcp.append((local, remote, parts[3]))
        return sorted(files), tcp, len(inodes)

    def downstream_sockets(self) -> list[str]:
        """Accepted client connections the proxy still holds (on any of its listeners)."""
        _, socks, _ = self._sockets()
        ports = {*self.ports.values(), self.admin_port}
        return [f"{lp}<-{rp} state={st}" for lp, rp, st in socks if lp in ports and st != "0A"]

    def fd_kinds(self) -> dict[str, Any]:
        """The proxy's descriptors by kind: files (pipes, epoll, logs...), sockets in no TCP
        table, listening sockets, client connections, and connections to each upstream."""
        files, socks, other = self._sockets()
        ports = {*self.ports.values(), self.admin_port}
        ups = {
            self.http.ports["up"]: "up_http",
            self.echo_port: "up_echo",
            self.bolt_up.port: "up_bolt",
            self.dubbo_up.port: "up_dubbo",
        }
        kinds: dict[str, Any] = {"files": files, "other_sockets": other}
        counts = dict.fromkeys(["listening", "downstream", "other_tcp", *ups.values()], 0)
        for lp, rp, st in socks:
            if st == "0A":
                counts["listening"] += 1
            elif lp in ports:
                counts["downstream"] += 1
            else:
                counts[ups.get(rp, "other_tcp")] += 1
        kinds.update(counts)
        return kinds

    def stats(self) -> dict[str, int]:
        self.stats_reads += 1
        status, body = admin_get(self.admin_port, "/stats", timeout=5)
        assert status == 200, body[:200]
        out: dict[str, int] = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if v.isdigit():
                out[k] = int(v)
        return out

    # -- good requests --------------------------------------------------------------------
    def connect(self, port: int, tls: bool = False, alpn: str = "http/1.1") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        if tls:
            ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
            ctx.set_alpn_protocols([alpn])
            s = ctx.wrap_socket(s, server_hostname="localhost")
        return s

    @staticmethod
    def read_all(s: socket.socket, timeout: float) -> bytes:
        return read_all(s, timeout)

    def good_http(self, name: str, tls: bool = False) -> None:
        path = f"/fuzz/good/{name}"
        with self.connect(self.targets[name].port, tls) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: fuzz\r\nconnection: close\r\n\r\n".encode())
            got = read_all(s, 3.0)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), (name, got[:300])
        assert body.startswith(f"upstream=up method=GET target={path} ".encode()), (name, got)
        # and HTTP/2 (prior knowledge, or ALPN h2 under TLS) on the same listener
        if name != "h2":
            self.good_h2(name, tls=tls)

    def good_h2(self, name: str, tls: bool = False) -> None:
        path = f"/fuzz/good/{name}/h2"
        port = self.targets[name].port
        c = _TlsH2Client(self.connect(port, True, "h2")) if tls else h2raw.H2Client(port)
        with c:
            c.handshake()
            c.request(1, h2raw.req(path=path, authority="fuzz"))
            o = c.outcome(1)
        assert o.kind == "response" and o.status == 200, (name, o.short(), o.frames)
        assert o.body.startswith(f"upstream=up method=GET target={path} ".encode()), o.body

    def good_tcp(self) -> None:
        with socket.create_connection(("127.0.0.1", self.ports["tcp"]), timeout=3) as s:
            s.sendall(b"fuzz-good")
            got = b""
            deadline = time.monotonic() + 3
            while len(got) < len(b"echo:fuzz-good") and time.monotonic() < deadline:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        assert got == b"echo:fuzz-good", got

    def _rpc(self, port: int, req: bytes, want: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(req)
            got = b""
            deadline = time.monotonic() + 3
            while len(got) < want and time.monotonic() < deadline:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        return got

    def good_bolt(self, name: str) -> None:
        # the client's id (109) back, the upstream's response otherwise byte for byte
        want = BOLT_RESP[:5] + BOLT_REQ[5:9] + BOLT_RESP[9:]
        got = self._rpc(self.ports[name], BOLT_REQ, len(want))
        assert got == want, (name, got.hex(), want.hex())

    def good_dubbo(self, name: str) -> None:
        want = b"\xda\xbb\x02\x14" + DUBBO_REQ[4:12] + struct.pack(">I", 4) + DUBBO_VALUE
        got = self._rpc(self.ports[name], DUBBO_REQ, len(want))
        assert got == want, (name, got.hex(), want.hex())

    def good_auto(self) -> None:
        self.good_http("auto")
        self.good_bolt("auto")
        self.good_dubbo("auto")

    def good_admin(self) -> None:
        status, body = admin_get(self.admin_port, "/ready", timeout=3)
        assert (status, body) == (200, "LIVE\n"), (status, body)


class _TlsH2Client(h2raw.H2Client):
    """h2raw's client on a socket already connected (here: TLS with ALPN h2)."""

    def __init__(self, sock: socket.socket):
        import hpack

        self.sock = sock
        self.buf = bytearray()
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 30
        self.eof = False
        self.server_settings = {}
        self.seen = []
        self._block = {}


# -- config pieces ---------------------------------------------------------------------------


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(name: str, port: int, filters: list[dict]) -> dict:
    return {
        "name": name,
        "stat_prefix": name,
        "address": _addr(port),
        "filter_chains": [{"filters": filters}],
    }


def _hcm(prefix: str, codec: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": prefix,
            "codec_type": codec,
            "stream_idle_timeout": "2s",
            "request_timeout": "3s",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": "http_up", "timeout": "2s"},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def _hcm_errors(prefix: str) -> list[str]:
    p = f"http.{prefix}."
    return [
        p + "downstream_cx_protocol_error",
        p + "downstream_rq_4xx",
        p + "downstream_rq_rx_reset",
    ]


def _tls(cert: bytes, key: bytes) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_DOWN,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": cert.decode()},
                        "private_key": {"inline_string": key.decode()},
                    }
                ],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }


def _tcp(prefix: str) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP, "stat_prefix": prefix, "cluster": "echo"},
    }


def _bolt(prefix: str) -> dict:
    return {
        "name": "sofamesh.filters.network.bolt_proxy",
        "typed_config": {
            "@type": BOLT,
            "stat_prefix": prefix,
            "default_timeout_ms": 1000,
            "route_config": [
                {
                    "name": "fuzz",
                    "interface": BOLT_SERVICE,
                    "routes": [{"match": {}, "route": {"cluster": "bolt_up"}}],
                }
            ],
        },
    }


def _dubbo(prefix: str) -> dict:
    return {
        "name": "envoy.filters.network.dubbo_proxy",
        "typed_config": {
            "@type": DUBBO,
            "stat_prefix": prefix,
            "protocol_type": "Dubbo",
            "serialization_type": "Hessian2",
            "route_config": [
                {
                    "name": f"fuzz{i}",
                    "interface": svc,
                    "routes": [
                        {
                            "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                            "route": {"cluster": "dubbo_up"},
                        }
                    ],
                }
                for i, svc in enumerate(DUBBO_SERVICES)
            ],
        },
    }


def _cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def read_all(s: socket.socket, timeout: float) -> bytes:
    """What the peer sends until it closes (or `timeout` passes)."""
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            return out
        if not d:
            return out
        out += d
