"""A connection error with the client's bytes still unread: the GOAWAY must reach the
client. Closing a socket with unread bytes makes the kernel send a RST, which can overtake
the GOAWAY and reset the client's connection before it reads it (seen as a flaky 5.1.2/1
conformance case). sofamesh closes as a lingering close: it shuts its side, then reads and
drops the client's bytes until the client closes, or 1 s (Envoy's delayed_close_timeout)
(Http2ServerConn._linger_close). Envoy 1.40 itself resets these connections (its
delayed close stops reading): its clients see no GOAWAY here, so this is sofamesh only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.h2raw import H2Client, frame, rst_stream

from .harness import started


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: Any):
    yield from started("sofamesh", tmp_path_factory)


def test_goaway_arrives_before_the_close(proxy):
    got = []
    for _ in range(20):
        with H2Client(proxy.port) as c:
            c.handshake()
            # an idle stream's RST_STREAM is a connection error; 8 MiB of frames of an
            # unknown type (ignored, never answered) follow in the same write, more than
            # the server reads before it answers
            c.send(rst_stream(1), *[frame(0xFA, 0, 0, b"x" * 16384) for _ in range(512)])
            o = c.outcome(1, timeout=5)
            got.append(o.short())
    assert got == ["GOAWAY(1)"] * 20, got
