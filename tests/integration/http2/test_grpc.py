"""grpcio client -> proxy -> grpcio server, through real Envoy 1.40 and through `sofamesh
proxy` with the same bootstrap (h2c downstream, HTTP/2 cluster): every kind of call,
deadlines, cancellation, a 16 MB message through flow control, errors with their status
and message, and the proxy's own replies to gRPC requests as gRPC statuses."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from .conftest import SERVICE


def _unary(ch: grpc.Channel, name: str = "Unary"):
    return ch.unary_unary(f"/{SERVICE}/{name}")


def test_unary_call_with_metadata_and_trailers(proxies):
    p = proxies()
    with p.channel() as ch:
        reply, call = _unary(ch).with_call(b"hello", metadata=(("x-client", "c1"),), timeout=10)
    assert reply == b"hello"
    assert ("x-trailer", "t-5") in tuple((m.key, m.value) for m in call.trailing_metadata())
    seen = dict(p.echo.seen_metadata[-1])
    assert seen["x-client"] == "c1"
    assert "x-request-id" in seen  # the proxy's request id reached the server
    assert call.code() == grpc.StatusCode.OK


def test_server_streaming_client_streaming_and_bidi(proxies):
    p = proxies()
    with p.channel() as ch:
        got = list(ch.unary_stream(f"/{SERVICE}/Stream")(b"500", timeout=10))
        assert got == [b"%d" % i for i in range(500)]
        joined = ch.stream_unary(f"/{SERVICE}/Collect")(
            iter([b"a", b"b" * 70000, b"c"]), timeout=10
        )
        assert joined == b"a|" + b"b" * 70000 + b"|c"
        chat = list(ch.stream_stream(f"/{SERVICE}/Chat")(iter([b"x", b"y", b"z"]), timeout=10))
        assert chat == [b"re:x", b"re:y", b"re:z"]


def test_sixteen_megabyte_message_both_ways_through_flow_control(proxies):
    p = proxies()
    big = bytes(range(256)) * (16 * 4096)
    with p.channel() as ch:
        assert _unary(ch)(big, timeout=60) == big


def test_error_status_and_message_reach_the_client(proxies):
    p = proxies()
    with p.channel() as ch, pytest.raises(grpc.RpcError) as e:
        _unary(ch)(b"fail:INVALID_ARGUMENT:bad thing happened", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "bad thing happened"


def test_deadline_exceeded_and_the_server_sees_the_cancellation(proxies):
    p = proxies()
    with p.channel() as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            _unary(ch)(b"sleep:5", timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 3
        # the client's RST_STREAM went through the proxy: the server stops waiting
        assert p.echo.cancelled.wait(5)


def test_client_cancels_a_stream_midway(proxies):
    p = proxies()
    with p.channel() as ch:
        call = ch.unary_stream(f"/{SERVICE}/Stream")(b"100000", timeout=30)
        first = [next(call) for _ in range(10)]
        assert first == [b"%d" % i for i in range(10)]
        call.cancel()
        assert p.echo.cancelled.wait(5)
        # the connection is still good for the next call
        assert _unary(ch)(b"after", timeout=10) == b"after"


def test_many_concurrent_calls_on_one_connection(proxies):
    p = proxies()
    errors: list = []
    with p.channel() as ch:
        f = _unary(ch)

        def worker(i: int) -> None:
            try:
                for j in range(20):
                    msg = b"%d-%d" % (i, j) * 50
                    assert f(msg, timeout=20) == msg
            except Exception as exc:  # noqa: BLE001 (collected: asserted below)
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_proxy_replies_to_grpc_requests_with_grpc_statuses(proxies):
    """No route: Envoy's 404 becomes UNIMPLEMENTED; an unreachable HTTP/2 cluster's 503
    becomes UNAVAILABLE with Envoy's reset text as the message."""
    routes = [
        {"match": {"prefix": "/" + SERVICE + "/", "grpc": {}}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/dead."}, "route": {"cluster": "h2dead"}},
    ]
    p = proxies(routes=routes)
    with p.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/nowhere.Svc/X")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/dead.Svc/X")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "upstream connect error" in e.value.details()
        # the grpc match needs content-type application/grpc: the same path as plain
        # HTTP/2 (not gRPC) does not take the gRPC route
        assert _unary(ch)(b"still fine", timeout=10) == b"still fine"


def test_grpc_stats_envoy_users_scrape(proxies):
    p = proxies()
    with p.channel() as ch:
        for _ in range(3):
            _unary(ch)(b"x", timeout=10)
    deadline = time.monotonic() + 5
    while True:
        s = p.stats()
        if s.get("http.ingress.downstream_rq_2xx", 0) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert s["http.ingress.downstream_cx_http2_total"] == 1
    assert s["http.ingress.downstream_rq_http2_total"] == 3
    assert s["http.ingress.downstream_rq_2xx"] == 3
    assert s["cluster.grpc.upstream_cx_http2_total"] == 1
    assert s["cluster.grpc.upstream_rq_200"] == 3


def _grpc_routes(**action) -> list:
    return [
        {
            "match": {"prefix": "/" + SERVICE + "/", "grpc": {}},
            "route": {"cluster": "grpc", **action},
        }
    ]


def test_retry_on_grpc_unavailable(proxies):
    """retry_on: unavailable retries a trailers-only grpc-status 14; resource-exhausted
    alone does not."""
    p = proxies(routes=_grpc_routes(retry_policy={"retry_on": "unavailable", "num_retries": 3}))
    with p.channel() as ch:
        assert _unary(ch)(b"flaky:2:a", timeout=10) == b"ok after 3"
        with pytest.raises(grpc.RpcError) as e:
            _unary(ch)(b"flaky:9:b", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "try again"
    assert p.echo.calls == {"a": 3, "b": 4}  # 1 try + 3 retries
    assert p.stats()["cluster.grpc.upstream_rq_retry"] == 5


def test_grpc_timeout_header_is_the_stream_deadline(proxies):
    """Route max_stream_duration.grpc_timeout_header_max: 0s (Envoy's "new timeouts"): the
    route timeout no longer applies nor is announced upstream, and a gRPC request's
    grpc-timeout is its stream's deadline: when it passes, the connection manager answers
    DEADLINE_EXCEEDED "downstream duration timeout" and counts it."""
    from .conftest import h2_request

    msd = {"max_stream_duration": {"grpc_timeout_header_max": "0s"}}
    routes = _grpc_routes(**msd) + [
        # an upstream that ignores grpc-timeout (a gRPC server would also time the call
        # out itself, racing the proxy): the recording upstream, told to answer late
        {"match": {"prefix": "/slow/", "grpc": {}}, "route": {"cluster": "h1", **msd}}
    ]
    p = proxies(routes=routes)
    with p.channel() as ch:
        _unary(ch)(b"x", timeout=7)
    assert "x-envoy-expected-rq-timeout-ms" not in dict(p.echo.seen_metadata[-1])
    # a raw HTTP/2 client sends grpc-timeout 300m and waits as long as it takes
    msg = b"slow"
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "svc"),
        (":path", "/slow/Unary"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "300m"),
        ("x-upstream-action", "delay=3000"),
    ]
    t0 = time.monotonic()
    out = h2_request(p.port, headers, b"\0" + len(msg).to_bytes(4, "big") + msg)
    took = time.monotonic() - t0
    assert 0.25 < took < 3, took
    h = dict(out["headers"])
    assert out["trailers"] is None  # trailers-only
    assert (h[":status"], h["grpc-status"], h["grpc-message"]) == (
        "200",
        "4",
        "downstream duration timeout",
    )
    assert p.stats()["http.ingress.downstream_rq_max_duration_reached"] == 1


def test_http1_client_to_grpc_upstream_with_trailers(proxies):
    """HTTP/1.1 -> HTTP/2: a gRPC call made over HTTP/1.1 (te: trailers, a framed message)
    reaches the HTTP/2 upstream; with the HCM's http_protocol_options.enable_trailers the
    response's grpc-status comes back in the chunked body's trailer section. Byte for byte
    as Envoy answers (but the date and the service time)."""
    import re
    import socket

    p = proxies(hcm={"http_protocol_options": {"enable_trailers": True}})
    msg = b"hello-h1"
    body = b"\0" + len(msg).to_bytes(4, "big") + msg
    req = (
        f"POST /{SERVICE}/Unary HTTP/1.1\r\nhost: svc\r\ncontent-type: application/grpc\r\n"
        f"te: trailers\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
            d = s.recv(65536)
            assert d, data
            data += d
    data = re.sub(rb"date: [^\r]*", b"date: D", data)
    data = re.sub(rb"x-envoy-upstream-service-time: \d+", b"x-envoy-upstream-service-time: T", data)
    assert data == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
        b"grpc-accept-encoding: identity, deflate, gzip\r\nx-envoy-upstream-service-time: T\r\n"
        b"date: D\r\nserver: envoy\r\ntransfer-encoding: chunked\r\n\r\n"
        b"d\r\n\x00\x00\x00\x00\x08hello-h1\r\n"
        b"0\r\ngrpc-status: 0\r\ngrpc-message: \r\nx-trailer: t-8\r\n\r\n"
    )


def test_use_downstream_protocol_config(proxies):
    """use_downstream_protocol_config: an HTTP/2 request goes upstream over HTTP/2 (the
    gRPC server), an HTTP/1.1 request over HTTP/1.1 (the recording upstream)."""
    import http.client

    from .conftest import _cluster

    routes = [
        {"match": {"prefix": "/" + SERVICE + "/"}, "route": {"cluster": "dual_grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "dual_h1"}},
    ]
    p = proxies(
        routes=routes,
        clusters=lambda grpc_port, h1_port: [
            _cluster("dual_grpc", grpc_port, "downstream"),
            _cluster("dual_h1", h1_port, "downstream"),
        ],
    )
    with p.channel() as ch:
        assert _unary(ch)(b"over h2", timeout=10) == b"over h2"
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("GET", "/plain", headers={"host": "svc"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    assert [r.version for r in p.upstream.snapshot()] == ["HTTP/1.1"]
    s = p.stats()
    assert s["cluster.dual_grpc.upstream_cx_http2_total"] == 1
    assert s["cluster.dual_h1.upstream_cx_http1_total"] == 1
