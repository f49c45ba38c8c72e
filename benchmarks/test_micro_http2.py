"""Micro-benchmarks (pytest-benchmark): the sofamesh HTTP/2 codec beside the pure-Python `h2`
package doing the same work in the same run.

    .venv/bin/python -m pytest benchmarks/test_micro_http2.py --benchmark-enable -q \
        --benchmark-columns=mean,median,ops --benchmark-sort=name

One exchange = the server end receives a gRPC-like request (HEADERS, DATA, trailers; the
bytes a client wrote, recorded once) and answers it (HEADERS, DATA, trailers), on a
connection that has already served one such request (the HPACK tables are warm). Nothing
here gates on absolute times.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from sofamesh._core.codecs import http2

sys.path.insert(0, str(Path(__file__).parent / "lib"))
from perf_workloads import GRPC_REQ as REQ  # the gate's inputs (perf_gate.py)

BODY = b"\0\0\0\0\x07\n\x05world"
RESP = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


def _client_bytes(n: int) -> tuple[bytes, list[bytes]]:
    """The preface, settings and a first request as an h2 client writes them, then n
    requests on streams 3, 5, ... carrying the block h2 writes for a repeat request (all
    fields indexed: the same block is valid again and again), each with the connection
    WINDOW_UPDATE a client sends for the previous response's DATA."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    c.initiate_connection()
    c.send_headers(1, REQ)
    c.send_data(1, BODY, end_stream=True)
    head = c.data_to_send()
    c.send_headers(3, REQ, end_stream=True)
    block = c.data_to_send()[9:]
    wu = _frame(8, 0, 0, len(BODY).to_bytes(4, "big"))
    reqs = [
        _frame(1, 0x4, sid, block) + _frame(0, 0x1, sid, BODY) + wu
        for sid in range(3, 2 * n + 3, 2)
    ]
    return head, reqs


def test_exchange_sofamesh(benchmark):
    head, reqs = _client_bytes(20001)
    conn = http2.Connection(max_concurrent_streams=100)
    conn.feed(head)
    it = iter(reqs)

    def one():
        evs = conn.feed(next(it))
        sid = evs[0].stream_id
        conn.send_headers(sid, RESP)
        conn.send_data(sid, BODY)
        conn.send_headers(sid, TRAILERS, end_stream=True)
        conn.acknowledge_received_data(sid, len(BODY))
        return conn.data_to_send()

    one()
    benchmark.pedantic(one, rounds=20000, iterations=1)


def test_exchange_h2_peer(benchmark):
    head, reqs = _client_bytes(20001)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    conn.receive_data(head)
    it = iter(reqs)

    def one():
        evs = conn.receive_data(next(it))
        sid = evs[0].stream_id
        conn.send_headers(sid, RESP)
        conn.send_data(sid, BODY)
        conn.send_headers(sid, TRAILERS, end_stream=True)
        conn.acknowledge_received_data(len(BODY), sid)
        return conn.data_to_send()

    one()
    benchmark.pedantic(one, rounds=20000, iterations=1)


@pytest.mark.parametrize("impl", ["sofamesh", "h2_peer"])
def test_bulk_data_64k(benchmark, impl):
    """A default window of DATA (65535 bytes in 4 frames) received and acknowledged."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384})
    head = c.data_to_send()
    c.send_headers(1, REQ)
    hdr = c.data_to_send()
    payload = _frame(0, 0, 1, b"x" * 16384) * 3 + _frame(0, 0, 1, b"x" * 16383)

    def run():
        if impl == "sofamesh":
            s = http2.Connection(max_concurrent_streams=100)
            s.feed(head + hdr)
            evs = s.feed(payload)
            for e in evs:
                s.acknowledge_received_data(1, len(e.data))
        else:
            s = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
            s.initiate_connection()
            s.receive_data(head + hdr)
            evs = s.receive_data(payload)
            for e in evs:
                if isinstance(e, h2.events.DataReceived):
                    s.acknowledge_received_data(e.flow_controlled_length, 1)
        return len(evs)

    assert benchmark(run) >= 4
