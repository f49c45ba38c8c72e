"""The hot-path micro-benchmarks the performance-regression gate counts (benchmarks/perf_gate.py):
each is `setup() -> op`, a callable doing one operation on the compiled hot path.

    python benchmarks/lib/perf_workloads.py NAME N     # set-up, then op() N times

The same inputs as the pytest-benchmark micro-benchmarks (benchmarks/test_micro_*.py), and
captured third-party frames for Bolt and Dubbo (tests/fixtures/protocols, provenance there).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / "tests" / "fixtures" / "protocols"

GET = (
    b"GET /api/v1/users/12345?expand=true HTTP/1.1\r\nHost: api.example.com\r\n"
    b"User-Agent: wrk/4.2\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"X-Request-Id: 3f1c1e1e-0a0b-4c4d-8e8f-000011112222\r\nConnection: keep-alive\r\n\r\n"
)
GRPC_REQ = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/helloworld.Greeter/SayHello"),
    (b":authority", b"backend:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.62.0 grpc-c/39.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
]


def h1_parse() -> Callable[[], object]:
    """HTTP/1.1 request head parse (a 7-header GET)."""
    from sofamesh._core.codecs import http1

    return lambda: http1.parse_request_head(GET)


def route_table(n_vhosts: int, n_routes: int):
    from envoy.config.route.v3 import route_pb2
    from google.protobuf import json_format

    from sofamesh.proxy.routes import compile_route_config

    vhosts = []
    for v in range(n_vhosts):
        routes = [
            {"match": {"prefix": f"/svc{r}/"}, "route": {"cluster": f"c{r}"}}
            for r in range(n_routes)
        ]
        routes.append(
            {"match": {"safe_regex": {"regex": "/api/v1/users/[0-9]+"}}, "route": {"cluster": "u"}}
        )
        vhosts.append(
            {"name": f"vh{v}", "domains": [f"host{v}.example.com", f"*.d{v}.com"], "routes": routes}
        )
    vhosts.append(
        {
            "name": "api",
            "domains": ["api.example.com"],
            "routes": [
                {
                    "match": {
                        "prefix": "/api/v1/users/",
                        "headers": [{"name": "accept", "string_match": {"exact": "*/*"}}],
                    },
                    "route": {"cluster": "users"},
                }
            ],
        }
    )
    rc = json_format.ParseDict({"virtual_hosts": vhosts}, route_pb2.RouteConfiguration())
    return compile_route_config(rc)


def route_match() -> Callable[[], object]:
    """Route lookup in 50 virtual hosts x 20 routes (domain, prefix, header matcher)."""
    from sofamesh._core.codecs import http1

    table = route_table(50, 20)
    _, head = http1.parse_request_head(GET)
    assert table.match(head).cluster == "users"
    return lambda: table.match(head)


def bolt_decode() -> Callable[[], object]:
    """Bolt v1 request with a 16-key SOFA header map (sofa-bolt-python's), decoded and its
    service read."""
    from sofamesh._core.codecs import bolt

    raw = (FRAMES / "bolt_py_1.bin").read_bytes()
    dec = bolt.BoltDecoder()

    def op():
        (f,) = dec.feed(raw)
        return f.service()

    assert op() is not None
    return op


def bolt_rewrite_id() -> Callable[[], object]:
    """A decoded Bolt request's id rewritten (the multiplexing upstream's own id)."""
    from sofamesh._core.codecs import bolt

    (f,) = bolt.BoltDecoder().feed((FRAMES / "bolt_py_1.bin").read_bytes())
    return lambda: bolt.rewrite_request_id(f, 77)


def dubbo_decode() -> Callable[[], object]:
    """Dubbo request with 8 attachments (mosn's benchmarkData), decoded and its invocation
    (service, method, attachments) parsed."""
    from sofamesh._core.codecs import dubbo

    raw = (FRAMES / "dubbo_benchmarkData.bin").read_bytes()
    dec = dubbo.DubboDecoder()

    def op():
        (f,) = dec.feed(raw)
        return f.parse_invocation()

    op()
    return op


def dubbo_rewrite_id() -> Callable[[], object]:
    from sofamesh._core.codecs import dubbo

    (f,) = dubbo.DubboDecoder().feed((FRAMES / "dubbo_benchmarkData.bin").read_bytes())
    return lambda: dubbo.rewrite_request_id(f, 77)


def token_bucket() -> Callable[[], object]:
    """local_ratelimit's token bucket: one try_consume (a bucket no run empties)."""
    from sofamesh._core.ratelimit import TokenBucket

    b = TokenBucket(1e12, 1e12, 1.0)
    return b.try_consume


def hpack_encode() -> Callable[[], object]:
    """HPACK encoding of a gRPC request's headers, steady state (the dynamic table warm)."""
    from sofamesh._core.codecs import hpack

    e = hpack.Encoder()
    e.encode(GRPC_REQ)
    return lambda: e.encode(GRPC_REQ)


def hpack_decode() -> Callable[[], object]:
    """HPACK decoding of the same block, cold (a new decoder: literal fields)."""
    from sofamesh._core.codecs import hpack

    block = hpack.Encoder().encode(GRPC_REQ)
    return lambda: hpack.Decoder().decode(block)


def h2_frames() -> Callable[[], object]:
    """HTTP/2 server connection: a request's HEADERS + DATA frames in, the response's
    HEADERS, DATA and trailers out (gRPC unary)."""
    from sofamesh._core.codecs import hpack, http2

    pre = http2.PREFACE + b"\0\0\0\x04\0\0\0\0\0"  # preface, empty SETTINGS
    conn = http2.Connection(max_concurrent_streams=100)
    conn.feed(pre)
    conn.data_to_send()
    enc = hpack.Encoder()
    state = {"sid": 1}

    def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
        n = len(payload).to_bytes(3, "big")
        return n + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload

    body = b"\0\0\0\0\x07\n\x05world"

    def op():
        sid = state["sid"]
        state["sid"] = sid + 2
        data = frame(1, 0x4, sid, enc.encode(GRPC_REQ)) + frame(0, 0x1, sid, body)
        data += frame(8, 0, 0, len(body).to_bytes(4, "big"))
        conn.feed(data)
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        conn.send_data(sid, body)
        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        conn.acknowledge_received_data(sid, len(body))
        return conn.data_to_send()

    op()
    return op


WORKLOADS: dict[str, Callable[[], Callable[[], object]]] = {
    "h1_parse": h1_parse,
    "route_match": route_match,
    "bolt_decode": bolt_decode,
    "bolt_rewrite_id": bolt_rewrite_id,
    "dubbo_decode": dubbo_decode,
    "dubbo_rewrite_id": dubbo_rewrite_id,
    "token_bucket": token_bucket,
    "hpack_encode": hpack_encode,
    "hpack_decode": hpack_decode,
    "h2_frames": h2_frames,
}


def main() -> None:
    name, n = sys.argv[1], int(sys.argv[2])
    op = WORKLOADS[name]()
    # the measured loop runs inside functools.reduce, which the gate tells callgrind to count
    # (--toggle-collect): imports and set-up are not counted
    functools.reduce(lambda _acc, _i: op(), range(n), None)


if __name__ == "__main__":
    main()
