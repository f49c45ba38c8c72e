"""Fixtures for proxy integration tests: real upstreams, a Server from a Bootstrap, a raw
HTTP/1.1 client that shows exactly what came back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from sofamesh._core.stats import Store
from sofamesh.proxy.server import Server

from .upstream import start_upstream, stop_upstream

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def cluster(name: str, ports: list, **extra: Any) -> dict:
    eps = []
    for p in ports:
        port, w = (p, None) if isinstance(p, int) else p
        e: dict = {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            }
        }
        if w is not None:
            e["load_balancing_weight"] = w
        eps.append(e)
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]},
    }
    c.update(extra)
    return c


def bootstrap(virtual_hosts: list, clusters: list, *, filters: list = (), **hcm: Any) -> Any:
    h = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "route_config": {"virtual_hosts": virtual_hosts},
        "http_filters": list(filters) + [ROUTER],
    }
    h.update(hcm)
    d = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l0",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": h,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        }
    }
    return json_format.ParseDict(d, bootstrap_pb2.Bootstrap())


def vhost(routes: list, domains: list = ("*",), name: str = "vh", **kw: Any) -> dict:
    v = {"name": name, "domains": list(domains), "routes": routes}
    v.update(kw)
    return v


def route(prefix: str = "/", cluster_name: str = "up", **action: Any) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


class Response:
    def __init__(self, status: int, reason: str, headers: list, body: bytes, raw_head: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_header(self, name: str) -> str | None:
        """A header the upstream echo saw."""
        for k, v in self.json()["headers"]:
            if k == name:
                return v
        return None


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> Response:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    _, code, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    hd = dict(headers)
    status = int(code)
    body = b""
    if head or status in (101, 204, 304) or status < 200:
        pass
    elif hd.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in hd:
        body = await reader.readexactly(int(hd["content-length"]))
    else:
        body = await reader.read()
    return Response(status, reason[0] if reason else "", headers, body, raw)


class Client:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def send(self, raw: bytes) -> None:
        if self.writer is None:
            await self.connect()
        self.writer.write(raw)
        await self.writer.drain()

    async def response(self, head: bool = False, timeout: float = 5) -> Response:
        return await asyncio.wait_for(read_response(self.reader, head), timeout)

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict | None = None,
        body: bytes = b"",
        host: str = "example.com",
    ) -> Response:
        h = {"host": host}
        if body:
            h["content-length"] = str(len(body))
        h.update(headers or {})
        raw = (
            f"{method} {path} HTTP/1.1\r\n".encode()
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items())
            + b"\r\n"
            + body
        )
        await self.send(raw)
        return await self.response(head=method == "HEAD")

    async def closed(self, timeout: float = 2) -> bool:
        """True when the proxy closed the connection (EOF) within timeout."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except (TimeoutError, ConnectionError):
            return False
        return data == b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass  # the proxy closed or reset it first: nothing left to close


class Proxy:
    def __init__(self, server: Server, store: Store):
        self.server = server
        self.store = store

    @property
    def port(self) -> int:
        return self.server.listeners[0].address[1]

    def counter(self, name: str) -> int:
        return self.store.counter(name).value

    def gauge(self, name: str) -> int:
        return self.store.gauge(name).value

    async def client(self) -> Client:
        return await Client(self.port).connect()


def pytest_asyncio_loop_factories(config, item):
    """The proxy runs on uvloop in production (workers, demo): test it there too."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
async def _fail_on_uvloop_exceptions():
    """tests/conftest.py patches asyncio's BaseEventLoop, which uvloop does not use: any
    exception that reaches this loop's handler fails the test here."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []

    def handler(lp, context):
        errors.append(context)
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    if errors:
        pytest.fail(f"unhandled event-loop exceptions: {errors!r}")


@pytest.fixture
async def upstreams():
    """A factory of real upstream servers, all stopped at teardown."""
    started = []

    async def make(name: str = "up"):
        s = await start_upstream(name)
        started.append(s)
        return s

    try:
        yield make
    finally:
        for s in started:
            await stop_upstream(s)


@pytest.fixture
async def proxy():
    """A factory: await proxy(bootstrap) -> Proxy running in this loop; stopped at teardown."""
    servers = []

    async def make(bs: Any) -> Proxy:
        store = Store()
        srv = Server(bs, stats=store)
        servers.append(srv)
        await srv.start()
        return Proxy(srv, store)

    try:
        yield make
    finally:
        for s in servers:
            await s.stop()
