"""sofamesh's gRPC client stream (proxy/grpc_unary.py `open_stream`, what the access log
service's StreamAccessLogs is sent on) against a real grpcio server: messages arrive whole and
in order, also those written before the connection was up; the server's answer and status
reach `done`; a server that stops reading makes `write` refuse at the bound instead of
buffering without end; `cancel` is seen by the server as a cancelled call; a refused
connection ends the stream UNAVAILABLE."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import uvloop
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from sofamesh.proxy.grpc_unary import CANCELLED, OK, UNAVAILABLE, GrpcUnaryChannel
from tests.conftest import free_port

PATH = b"/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


class Als(als_pb2_grpc.AccessLogServiceServicer):
    """Records each message's log_name; a message named "stop" ends the call with
    RESOURCE_EXHAUSTED; `stall` stops reading (until `release` is set)."""

    def __init__(self, stall: bool = False):
        self.got: list[str] = []
        self.stall = stall
        self.release = threading.Event()
        self.ended = threading.Event()
        self.ended_by = ""  # how the requests ended: "end" (half-close) or "cancelled"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def StreamAccessLogs(self, request_iterator, context):
        if self.stall:
            self.release.wait(20)
        self.ended_by = "end"
        try:
            for m in request_iterator:
                self.got.append(m.identifier.log_name)
                if m.identifier.log_name == "stop":
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "enough")
            # the client reset the stream: grpcio may end the iterator instead of raising,
            # depending on when the RST_STREAM is seen (CI, 2026-12-04), and marks the call
            # inactive a moment later on a loaded machine; a half-closed call stays active
            deadline = time.monotonic() + 0.5
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not context.is_active():
                self.ended_by = "cancelled"
        except grpc.RpcError:
            self.ended_by = "cancelled"  # the client reset the stream
            raise
        finally:
            self.ended.set()
        return als_pb2.StreamAccessLogsResponse()


async def _until(cond, seconds: float = 3.0) -> None:
    """Waits (polling every 10 ms) until cond() holds or `seconds` pass."""
    for _ in range(int(seconds * 100)):
        if cond():
            return
        await asyncio.sleep(0.01)


def _msg(name: str, pad: int = 0) -> bytes:
    m = als_pb2.StreamAccessLogsMessage()
    m.identifier.log_name = name + "x" * pad if pad else name
    return m.SerializeToString()


def _run(coro_fn):
    async def main():
        return await coro_fn(asyncio.get_running_loop())

    return uvloop.run(main())


def test_messages_arrive_in_order_and_the_answer_reaches_done():
    s = Als()
    try:

        async def go(loop):
            ch = GrpcUnaryChannel(loop, "127.0.0.1", s.port, 2.0)
            done = loop.create_future()
            opened = []
            st = ch.open_stream(
                PATH, lambda code, d: done.set_result((code, d)), on_open=lambda: opened.append(1)
            )
            # written before the connection is up: queued in the stream, sent on open
            assert st.write(_msg("m0")) and st.write(_msg("m1"))
            assert not st.is_open
            await _until(lambda: st.is_open)
            assert st.is_open and opened == [1]
            for i in range(2, 50):
                assert st.write(_msg(f"m{i}"))
            await _until(lambda: len(s.got) == 50)
            got = list(s.got)
            # the client ends its side: the server returns its answer and status OK
            ch.codec.end_stream(st.c.sid)
            ch._flush()
            code, data = await asyncio.wait_for(done, 5)
            ch.close()
            return got, code, data

        got, code, data = _run(go)
        assert s.ended_by == "end"
        assert got == [f"m{i}" for i in range(50)]
        assert code == OK and data == b""
    finally:
        s.server.stop(0)


def test_the_servers_status_ends_the_stream_and_writes_are_refused():
    s = Als()
    try:

        async def go(loop):
            ch = GrpcUnaryChannel(loop, "127.0.0.1", s.port, 2.0)
            done = loop.create_future()
            st = ch.open_stream(PATH, lambda code, d: done.set_result(code))
            for name in ("m0", "m1", "stop"):
                st.write(_msg(name))
            code = await asyncio.wait_for(done, 5)
            after = st.write(_msg("late"))
            # the connection still serves a new stream
            done2 = loop.create_future()
            st2 = ch.open_stream(PATH, lambda code, d: done2.set_result(code))
            st2.write(_msg("again"))
            await _until(lambda: "again" in s.got)
            st2.cancel()
            code2 = await asyncio.wait_for(done2, 5)
            ch.close()
            return code, after, code2

        code, after, code2 = _run(go)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert after is False
        assert code2 == CANCELLED
        assert "again" in s.got
    finally:
        s.server.stop(0)


def test_a_server_that_stops_reading_makes_write_refuse_at_the_bound():
    s = Als(stall=True)
    try:

        async def go(loop):
            ch = GrpcUnaryChannel(loop, "127.0.0.1", s.port, 2.0)
            st = ch.open_stream(PATH, lambda code, d: None, max_buffered=256 * 1024)
            await _until(lambda: st.is_open)
            sent = refused = 0
            # 64 KiB messages: the server's windows (grpcio grows them up to some MiB) fill,
            # then our queue does; from there on every write is refused, not buffered
            for _ in range(2000):
                if st.write(_msg("big", pad=65536)):
                    sent += 1
                else:
                    refused += 1
                await asyncio.sleep(0)
                if refused >= 20:
                    break
            queued = ch.codec.outbound_buffered(st.c.sid)
            s.release.set()
            ch.close()
            return sent, refused, queued

        sent, refused, queued = _run(go)
        assert refused >= 20, (sent, refused)
        assert queued <= 256 * 1024 + 65536 + 64
        assert sent < 2000
    finally:
        s.release.set()
        s.server.stop(0)


def test_cancel_is_a_cancelled_call_for_the_server():
    s = Als()
    try:

        async def go(loop):
            ch = GrpcUnaryChannel(loop, "127.0.0.1", s.port, 2.0)
            codes = []
            st = ch.open_stream(PATH, lambda code, d: codes.append(code))
            st.write(_msg("one"))
            await _until(lambda: s.got)
            st.cancel()
            await asyncio.sleep(0.05)
            ch.close()
            return codes

        assert _run(go) == [CANCELLED]
        assert s.ended.wait(5)
        assert s.got == ["one"]
        assert s.ended_by == "cancelled"
    finally:
        s.server.stop(0)


def test_no_server_ends_the_stream_unavailable():
    async def go(loop):
        ch = GrpcUnaryChannel(loop, "127.0.0.1", free_port(), 2.0)
        done = loop.create_future()
        st = ch.open_stream(PATH, lambda code, d: done.set_result(code))
        st.write(_msg("lost"))
        code = await asyncio.wait_for(done, 5)
        ch.close()
        return code, st.finished

    assert _run(go) == (UNAVAILABLE, True)
