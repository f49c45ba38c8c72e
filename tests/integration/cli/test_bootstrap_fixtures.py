"""The sample bootstraps in tests/fixtures/bootstraps, run as a user types the command:
`sofamesh proxy --mode validate -c` accepts each, and one `sofamesh proxy -c mixed.yaml`
serves HTTP, tcp_proxy, dubbo_proxy, bolt_proxy and auto listeners in one process."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from sofamesh._core.codecs import bolt, dubbo
from tests.conftest import ROOT, sofamesh_command
from tests.integration.admin.helpers import get, stop, wait_live

BOOTSTRAPS = ROOT / "tests" / "fixtures" / "bootstraps"


@pytest.mark.parametrize("name", ["http", "dubbo", "bolt", "auto", "mixed"])
def test_validate_accepts_the_sample(name, tmp_path):
    cfg = BOOTSTRAPS / f"{name}.yaml"
    r = subprocess.run(
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # nothing beside it: the filter types come from the installed package
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"configuration '{cfg}' OK"


def _exchange(port: int, data: bytes, decoder, want: int) -> list:
    frames: list = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        while len(frames) < want:
            d = s.recv(65536)
            if not d:
                break
            frames += decoder.feed(d)
    return frames


def _http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
        out = b""
        while d := s.recv(65536):
            out += d
    return out


def _admin_port(path: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no admin address written"
        time.sleep(0.05)
    return int(path.read_text().strip().rsplit(":", 1)[1])


def test_one_process_serves_every_network_filter(tmp_path):
    addr = tmp_path / "admin_address"
    proc = subprocess.Popen(
        [
            *sofamesh_command(),
            "proxy",
            "-c",
            str(BOOTSTRAPS / "mixed.yaml"),
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--admin-address-path",
            str(addr),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        admin = _admin_port(addr, proc)
        wait_live(admin, proc)
        status, body = get(admin, "/listeners")
        assert status == 200
        ports = {}
        for line in body.split():
            name, _, address = line.partition("::")
            ports[name] = int(address.rsplit(":", 1)[1])
        assert sorted(ports) == ["auto", "bolt", "dubbo", "http", "tcp"]

        reply = _http_get(ports["http"], "/hello")
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello\n")
        (ack,) = _exchange(ports["bolt"], bolt.heartbeat(11), bolt.BoltDecoder(), 1)
        assert (ack.request_id, ack.status) == (11, 0)
        (ev,) = _exchange(ports["dubbo"], dubbo.heartbeat(12), dubbo.DubboDecoder(), 1)
        assert ev.is_event and (ev.request_id, ev.status) == (12, 20)
        # the sniffing listener hands each protocol to its own filter
        reply = _http_get(ports["auto"], "/")
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"sniffed\n")
        (ack,) = _exchange(ports["auto"], bolt.heartbeat(13), bolt.BoltDecoder(), 1)
        assert (ack.request_id, ack.status) == (13, 0)
        (ev,) = _exchange(ports["auto"], dubbo.heartbeat(14), dubbo.DubboDecoder(), 1)
        assert ev.is_event and ev.request_id == 14
        with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=5):
            pass  # bound and accepting; its upstream is not started here
    finally:
        stop(proc)
