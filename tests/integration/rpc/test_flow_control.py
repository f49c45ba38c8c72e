"""Flow control of the RPC proxy when an upstream stops reading: clients of the listener are
not read while its buffer is full (new ones included), and are read again once that upstream
connection is gone (the transport never says "resume" for a connection that died full)."""

from __future__ import annotations

import socket
import time

from sofamesh._core.codecs import bolt

from .conftest import (
    RawUpstream,
    bolt_filter,
    bootstrap,
    cluster,
    free_port,
    listener,
    route_config,
    sofamesh,
)


def _req(rid: int, service: str, size: int = 1) -> bytes:
    return bolt.BoltFrame(
        request_id=rid,
        class_name=bolt.SOFA_REQUEST_CLASS,
        timeout=60000,
        headers={"service": service, "sofa_head_method_name": "m"},
        content=b"\x91" * size,
    ).encode()


def _flood(s: socket.socket, frame: bytes, limit: float = 15.0) -> tuple[int, int]:
    """Sends `frame` over and over until the proxy stops taking bytes for 1 s; returns
    (bytes sent, offset into the frame being sent)."""
    s.setblocking(False)
    sent = off = 0
    start = last = time.monotonic()
    while time.monotonic() - last < 1.0:
        # kernel buffers on both hops hold a few MB; without flow control the proxy
        # would take everything into memory
        assert sent < 64 * 1024 * 1024 and time.monotonic() - start < limit, (
            f"the proxy kept reading ({sent} bytes)"
        )
        try:
            n = s.send(memoryview(frame)[off:])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        off = (off + n) % len(frame)
        last = time.monotonic()
    return sent, off


def _replies_until(s: socket.socket, rid: int, timeout: float) -> list:
    """Decodes replies on `s` until one carries request id `rid`."""
    dec = bolt.BoltDecoder()
    frames: list = []
    deadline = time.monotonic() + timeout
    s.setblocking(True)
    while not any(f.request_id == rid for f in frames):
        left = deadline - time.monotonic()
        assert left > 0, f"no reply for request {rid} ({len(frames)} other replies)"
        s.settimeout(left)
        data = s.recv(65536)
        assert data, "connection closed"
        frames += dec.feed(data)
    return frames


def test_clients_are_read_again_after_a_full_upstream_dies(tmp_path):
    with RawUpstream("stall") as stall:
        port = free_port()
        boot = bootstrap(
            [
                listener(
                    "bolt",
                    port,
                    [
                        bolt_filter(
                            [route_config("com.raw.Stall", "stall")], default_timeout_ms=60000
                        )
                    ],
                )
            ],
            [cluster("stall", [stall.port])],
        )
        big = _req(1, "com.raw.Stall:1.0", size=256 * 1024)
        with (
            sofamesh(boot, tmp_path),
            socket.create_connection(("127.0.0.1", port), timeout=3) as c1,
        ):
            _, off = _flood(c1, big)

            # a client that connects now is not read either (its requests would go to
            # the same full buffers)
            c2 = socket.create_connection(("127.0.0.1", port), timeout=3)
            c2.sendall(_req(3, "com.nobody.Svc:1.0"))
            c2.settimeout(0.5)
            try:
                early = c2.recv(65536)
            except TimeoutError:
                early = None
            assert early is None, early

            stall.kill()
            # the requests held for the dead upstream are answered, and the client is read
            # again: the rest of its last frame and a request after it go through
            c1.setblocking(True)
            c1.settimeout(10)
            tail = memoryview(big)[off:] if off else b""
            c1.sendall(bytes(tail) + _req(2, "com.nobody.Svc:1.0"))
            frames = _replies_until(c1, 2, timeout=10)
            assert [f.status for f in frames if f.request_id == 2] == [bolt.STATUS_NO_PROCESSOR]
            failed = [f.status for f in frames if f.request_id == 1]
            assert failed and set(failed) == {bolt.STATUS_CONNECTION_CLOSED}, set(failed)
            # and the request the second client sent while paused is served now
            with c2:
                got = _replies_until(c2, 3, timeout=10)
            assert [(f.request_id, f.status) for f in got] == [(3, bolt.STATUS_NO_PROCESSOR)]
