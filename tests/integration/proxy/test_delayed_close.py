"""HTTP/1.1 delayed close: when the proxy answers and closes while the
client is still sending (a request head trickling in, an upload the route refuses), the
client still gets the answer. Envoy writes it, then reads and drops the client's bytes until
the client closes or `delayed_close_timeout` (1 s) passes; a proxy that closed at once would
leave those bytes unread and the kernel would answer with a RST, which can overtake the
answer and lose it."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.admin.helpers import BOOTSTRAP, get, start_sofamesh, stop
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

REJECT = """              - match: {{prefix: "/reject"}}
                direct_response: {{status: 403, body: {{inline_string: "refused upload"}}}}
              - match: {{prefix: "/"}}
"""


def _upload(port: int, size: int) -> bytes:
    """POST `size` bytes in 64 KiB pieces, a little at a time, reading nothing until all
    of it is sent (as a simple client does), then read the answer."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    try:
        s.sendall(b"POST /reject HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"u" * 65536
        sent = 0
        send_error = None
        while sent < size:
            try:
                s.sendall(piece)
            except OSError as exc:
                send_error = exc
                break
            sent += len(piece)
            time.sleep(0.003)
        got = b""
        try:
            while True:
                more = s.recv(65536)
                if not more:
                    break
                got += more
        except OSError as exc:
            return b"recv failed: %r after send error %r" % (exc, send_error)
        return got
    finally:
        s.close()


def _answers(tmp_path, upstream: int, sizes: tuple[int, ...]) -> dict:
    admin, port = free_ports(2)
    cfg = tmp_path / "sofamesh.yaml"
    cfg.write_text(
        BOOTSTRAP.replace('              - match: {{prefix: "/"}}\n', REJECT).format(
            admin=admin, port=port, upstream=upstream
        )
    )
    proc = start_sofamesh(cfg, admin)
    try:
        out: dict = {}
        for size in sizes:
            for n in range(3):
                got = _upload(port, size)
                head, _, body = got.partition(b"\r\n\r\n")
                out[size, n] = (
                    head.split(b"\r\n", 1)[0],
                    b"connection: close" in head.lower(),
                    body,
                )
        _, stats = get(admin, "/stats")
        out["before_complete"] = [
            int(line.rsplit(" ", 1)[1])
            for line in stats.splitlines()
            if line.startswith("http.ingress_http.downstream_rq_response_before_rq_complete:")
        ]
        return out
    finally:
        stop(proc)


ANSWER = (b"HTTP/1.1 403 Forbidden", True, b"refused upload")


def test_answer_survives_a_client_still_sending(tmp_path):
    """Uploads the route refuses, from 1 kB to 4 MB, three of each: every one gets the 403
    with `connection: close`, and every one counts as answered before the request was
    complete. Envoy 1.40, judged the same way, is not the model here: it stops reading
    once it has answered and its close at the end of delayed_close_timeout resets the
    connection, so its client lost the answer in about half of these runs (1 kB to 1 MB)."""
    up = RecordingUpstream(["a"]).start()
    sizes = (1000, 100_000, 1_000_000, 4_000_000)
    try:
        ours = _answers(tmp_path, up.ports["a"], sizes)
    finally:
        up.stop()
    assert ours == {(size, n): ANSWER for size in sizes for n in range(3)} | {
        "before_complete": [12]
    }


pytestmark = pytest.mark.timeout(90)
