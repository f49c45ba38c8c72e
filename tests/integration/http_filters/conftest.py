"""The everyday HTTP filters (CORS, compressor, decompressor) and the stdout/stderr access
loggers, differentially: each test builds one bootstrap, and `pair` runs it in Envoy 1.40 and
in `sofamesh proxy`, each in front of its own ScriptedUpstream, so the same requests can be
sent through both and the answers compared.

ScriptedUpstream is an HTTP/1.1 server whose reply is scripted by request headers:

    x-resp-status: N        status (default 200)
    x-resp-type: T          content-type (default text/plain; "none": no content-type)
    x-resp-size: N          a body of N bytes of text (default: a short line)
    x-resp-etag: E          an etag header
    x-resp-header: k=v      one more response header (repeatable, comma-free)
    x-resp-chunked: 1       the body chunked (three chunks), no content-length
    x-resp-trailers: 1      chunked, and the last chunk carries `x-trailer: t`
    x-resp-encoding: gzip   the body gzip-compressed, with content-encoding: gzip
    x-resp-echo: 1          the body is the request body as received

Each request is recorded (method, path, headers, body) in `records`.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

TEXT = b"The quick brown fox jumps over the lazy dog. " * 2048


@dataclass
class Req:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class ScriptedUpstream:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.records: list[Req] = []
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> ScriptedUpstream:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers.append((k.strip(), v.strip()))
                hd = {k.lower(): v for k, v in headers}
                body = b""
                if "content-length" in hd:
                    body = f.read(int(hd["content-length"]))
                elif hd.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        n = int(f.readline().split(b";")[0], 16)
                        if n == 0:
                            while f.readline() not in (b"\r\n", b""):
                                pass
                            break
                        body += f.read(n)
                        f.readline()
                rec = Req(method, path, headers, body)
                self.records.append(rec)
                c.sendall(self._reply(rec, hd))
        except (OSError, ValueError):
            pass
        finally:
            c.close()

    def _reply(self, rec: Req, hd: dict[str, str]) -> bytes:
        status = int(hd.get("x-resp-status", "200"))
        if "x-resp-echo" in hd:
            body = rec.body
        elif "x-resp-size" in hd:
            body = TEXT[: int(hd["x-resp-size"])]
        else:
            body = f"upstream {rec.method} {rec.path}\n".encode()
        head = [f"HTTP/1.1 {status} X", "server: scripted"]
        ctype = hd.get("x-resp-type", "text/plain")
        if ctype != "none":
            head.append(f"content-type: {ctype}")
        if "x-resp-etag" in hd:
            head.append(f"etag: {hd['x-resp-etag']}")
        for k, v in rec.headers:
            if k.lower() == "x-resp-header":
                name, _, val = v.partition("=")
                head.append(f"{name}: {val}")
        if hd.get("x-resp-encoding") == "gzip":
            body = gzip.compress(body)
            head.append("content-encoding: gzip")
        if status in (204, 304) or rec.method == "HEAD":
            if rec.method == "HEAD":
                head.append(f"content-length: {len(body)}")
            return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if "x-resp-chunked" in hd or "x-resp-trailers" in hd:
            head.append("transfer-encoding: chunked")
            n = len(body)
            parts = [body[: n // 3], body[n // 3 : 2 * n // 3], body[2 * n // 3 :]]
            last = b"0\r\nx-trailer: t\r\n\r\n" if "x-resp-trailers" in hd else b"0\r\n\r\n"
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + last
        else:
            head.append(f"content-length: {len(body)}")
            payload = body
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def bootstrap(
    port: int,
    admin: int,
    upstream: int,
    http_filters: list[dict],
    virtual_host: dict | None = None,
    hcm_extra: dict | None = None,
    node: dict | None = None,
    cluster_extra: dict | None = None,
    network_filters: list[dict] | None = None,
) -> dict:
    vh = virtual_host or {"routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}
    vh = {"name": "vh", "domains": ["*"], **vh}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {"name": "rc", "virtual_hosts": [vh]},
        "http_filters": [
            *http_filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        **(hcm_extra or {}),
    }
    return {
        **({"node": node} if node else {}),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                *(network_filters or []),
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                },
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    **(cluster_extra or {}),
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, arrival order
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name]
        return ",".join(vals) if vals else None

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


# headers whose values differ run to run or proxy to proxy by nature
VOLATILE = {"date", "x-envoy-upstream-service-time", "x-request-id"}


def comparable(r: Reply) -> tuple[int, list[tuple[str, str]]]:
    return r.status, sorted((k, v) for k, v in r.headers if k not in VOLATILE)


@dataclass
class Side:
    kind: str
    port: int
    admin: int
    proc: ProxyProcess
    upstream: ScriptedUpstream

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            items = list(headers.items() if isinstance(headers, dict) else headers or [])
            own_host = any(k.lower() == "host" for k, _ in items)
            conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
            for k, v in items:
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            return Reply(r.status, [(k.lower(), v) for k, v in r.getheaders()], data)
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Sends raw bytes, returns everything until the proxy closes or 2 s pass."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(data)
            out = b""
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    out += b
            except TimeoutError:
                pass
            return out

    def stats(self) -> dict[str, int]:
        _, text = admin_get(self.admin, "/stats")
        out: dict[str, int] = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out


def _distinct(n: int, exclude: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out and p not in exclude:
            out.append(p)
    return out


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Callable[..., tuple[Side, Side]]]:
    """pair(http_filters, virtual_host=None, hcm_extra=None, node=None, cluster_extra=None,
    network_filters=None) -> (envoy, sofamesh)."""
    started: list[Side] = []

    def start_one(kind: str, kw: dict[str, Any]) -> Side:
        up = ScriptedUpstream().start()
        for attempt in range(3):
            port, admin = _distinct(2, {up.port})
            boot = bootstrap(port, admin, up.port, **kw)
            work = tmp_path / f"{kind}-{len(started)}-{attempt}"
            if kind == "envoy":
                proc = ProxyProcess.envoy(envoy_binary(), boot, work)
            else:
                proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
            try:
                proc.start()
            except RuntimeError as e:
                proc.stop()
                if attempt < 2 and "in use" in str(e):
                    continue
                up.stop()
                raise
            side = Side(kind, port, admin, proc, up)
            started.append(side)
            return side
        raise AssertionError("unreachable")

    def start(**kw: Any) -> tuple[Side, Side]:
        return start_one("envoy", kw), start_one("sofamesh", kw)

    yield start
    for s in started:
        s.proc.stop()
        s.upstream.stop()


def typed(type_name: str, **fields: Any) -> dict:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}
