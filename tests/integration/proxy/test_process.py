"""The proxy as a separate process (`sofamesh proxy`, `sofamesh demo`): 1 GB bodies stream
through in bounded memory with backpressure, and the demo works as the README says."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import pytest
from google.protobuf import json_format

from tests.conftest import free_port, sofamesh_command

from .conftest import Client, bootstrap, cluster, route, vhost

GB = 1 << 30


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def run_proxy(tmp_path):
    procs = []

    def start(bs) -> tuple[subprocess.Popen, int]:
        port = free_port()
        bs.static_resources.listeners[0].address.socket_address.port_value = port
        cfg = tmp_path / f"proxy{len(procs)}.json"
        cfg.write_text(json_format.MessageToJson(bs))
        p = subprocess.Popen(
            sofamesh_command() + ["proxy", "-c", str(cfg), "--concurrency", "1", "-l", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(p)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return p, port
            except OSError:
                if p.poll() is not None:
                    raise AssertionError(p.stderr.read().decode())
                time.sleep(0.05)
        raise AssertionError("proxy did not start")

    try:
        yield start
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def test_one_gigabyte_each_way_in_bounded_memory(upstreams, run_proxy):
    up = await upstreams()
    proc, port = run_proxy(
        bootstrap([vhost([route("/", timeout="0s")])], [cluster("up", [up.port])])
    )
    c = await Client(port).connect()
    # download: the upstream writes 1 GB as fast as the proxy lets it
    await c.send(b"GET /big/%d HTTP/1.1\r\nhost: a\r\n\r\n" % GB)
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 10)
    assert b"content-length: %d" % GB in head
    got = 0
    while got < GB:
        chunk = await asyncio.wait_for(c.reader.read(1 << 20), 10)
        assert chunk
        got += len(chunk)
    assert got == GB
    # upload: 1 GB request body with content-length, counted by the upstream
    c.writer.write(b"POST /sink HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % GB)
    block = b"y" * (1 << 20)
    for _ in range(GB >> 20):
        c.writer.write(block)
        await c.writer.drain()
    r = await c.response(timeout=30)
    assert r.status == 200 and r.body == str(GB).encode()
    peak = _peak_rss_mb(proc.pid)
    await c.close()
    print(f"peak RSS {peak:.0f} MB")
    assert peak < 100, f"proxy peak RSS {peak:.0f} MB while moving 2 GB"


def test_demo_command_serves_and_exits(tmp_path):
    port = free_port()
    cmd = sofamesh_command() + [
        "demo",
        "--simple",
        "--listen-port",
        str(port),
        "--upstream-port",
        "0",
        "--admin-port",
        "0",
        "--exit-after",
        "4",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 15
        while "sidecar:" not in line and time.time() < deadline:
            line = p.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line

        async def go():
            c = await Client(port).connect()
            r = await c.request(path="/hello")
            assert r.status == 200 and r.body == b"hello from sofamesh\n"
            r = await c.request(path="/api/v1?x=1", headers={"user-agent": "demo-test"})
            assert r.status == 200
            echo = r.json()
            assert echo["path"] == "/api/v1?x=1"
            assert dict(echo["headers"])["x-forwarded-proto"] == "http"
            assert re.fullmatch(r"[0-9a-f-]{36}", dict(echo["headers"])["x-request-id"])
            await c.close()

        asyncio.run(go())
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
