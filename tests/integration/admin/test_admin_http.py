"""The admin listener's HTTP/1.1 handling: keep-alive and pipelining, HEAD, bodies, and bad
input answered with 400/431 while the listener keeps serving (in-process, loopback)."""

from __future__ import annotations

import asyncio

import pytest

from sofamesh._core.stats import Store
from sofamesh.admin.backend import LocalBackend
from sofamesh.admin.handlers import STATE_LIVE, AdminState
from sofamesh.admin.server import AdminServer
from sofamesh.config import load_bootstrap
from sofamesh.proxy.cli import Options
from tests.integration.admin.contract_server import ContractServer


@pytest.fixture
async def admin():
    b = load_bootstrap(
        None, config_yaml="static_resources: {clusters: [{name: c, connect_timeout: 1s}]}"
    )
    store = Store()
    server = ContractServer(b, store, Options())
    await server.start()
    st = AdminState(b, Options(), LocalBackend(server, store))
    st.state = STATE_LIVE
    srv = AdminServer(st)
    _host, port = await srv.start("127.0.0.1", 0)
    try:
        yield port, st
    finally:
        await srv.stop()
        await server.stop()


async def exchange(port: int, data: bytes, until_close: bool = True) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        await w.drain()
        return await asyncio.wait_for(r.read(), 5) if until_close else b""
    finally:
        w.close()


async def test_pipelined_keepalive_and_head(admin):
    port, _ = admin
    out = await exchange(
        port,
        b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n"
        b"HEAD /ready HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.count(b"LIVE\n") == 2  # HEAD has no body
    assert out.endswith(b"LIVE\n")


async def test_post_with_body(admin):
    port, st = admin
    out = await exchange(
        port,
        b"POST /healthcheck/fail HTTP/1.1\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc",
    )
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"OK\n")
    assert st.health_failed


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nno-colon-here\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
    ],
)
async def test_bad_requests_get_400_and_admin_keeps_serving(admin, garbage):
    port, _st = admin
    out = await exchange(port, garbage)
    assert out.startswith(b"HTTP/1.1 400 Bad Request"), out
    ok = await exchange(port, b"GET /ready HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK")


async def test_oversized_headers_get_431(admin):
    port, _ = admin
    out = await exchange(port, b"GET / HTTP/1.1\r\nx: " + b"a" * 200_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    ok = await exchange(port, b"GET /ready HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK")


async def test_client_vanishing_mid_request(admin):
    port, _st = admin
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /stats HTTP/1.1\r\ncontent-length: 100\r\n\r\npartial")
    await w.drain()
    w.close()
    await asyncio.sleep(0.05)
    ok = await exchange(
        port,
        b"GET /stats?filter=^http\\.admin\\.downstream_cx_total$ HTTP/1.1"
        b"\r\nconnection: close\r\n\r\n",
    )
    assert b"http.admin.downstream_cx_total: " in ok


async def test_stop_closes_idle_keepalive_connections():
    """A client holding a keep-alive connection open must not leave a handler behind to be
    cancelled at loop shutdown (the autouse fixture fails on any loop exception)."""
    b = load_bootstrap(None, config_yaml="node: {id: x}")
    store = Store()
    server = ContractServer(b, store, Options())
    await server.start()
    st = AdminState(b, Options(), LocalBackend(server, store))
    st.state = STATE_LIVE
    srv = AdminServer(st)
    _, port = await srv.start("127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /ready HTTP/1.1\r\n\r\n")
    await w.drain()
    assert (await r.readuntil(b"LIVE\n")).startswith(b"HTTP/1.1 200 OK")
    await srv.stop()  # the client is still connected, idle
    assert srv._clients == set()
    assert await asyncio.wait_for(r.read(), 2) == b""  # closed by the server
    w.close()
    await server.stop()
