"""proxy/tracing's reporter and the OpenTelemetry encoding, without sockets: the bounded
buffer (batches of MIN_FLUSH_SPANS, one export in flight, drops counted past MAX_PENDING,
failed exports counted), Envoy's span status rules, and the OTLP bytes a batch becomes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts

from sofamesh.proxy import tracing, tracing_otel
from sofamesh.proxy.tracing import MIN_FLUSH_SPANS, SpanRecord, SpanReporter


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self.used = False


def _rec(i: int, kind: str = "SERVER", tags: dict | None = None) -> SpanRecord:
    return SpanRecord(
        "0af7651916cd43dd8448eb211c80319c",
        f"{i:016x}",
        None,
        "ingress",
        kind,
        1_000_000 + i,
        1_000_500 + i,
        tags or {"http.status_code": "200"},
    )


def _reporter(loop, export) -> tuple[SpanReporter, dict]:
    c = {k: _Counter() for k in ("sent", "timer_flushed", "dropped", "failed")}
    return SpanReporter(loop, export, c, "test"), c


def test_batches_of_min_flush_spans_one_export_at_a_time():
    async def main():
        batches: list[list[SpanRecord]] = []
        gate = asyncio.Event()

        async def export(batch):
            batches.append(batch)
            await gate.wait()
            return True

        rep, c = _reporter(asyncio.get_running_loop(), export)
        for i in range(MIN_FLUSH_SPANS * 3):
            rep.enqueue(_rec(i))
        await asyncio.sleep(0)
        # the first batch is in flight; the rest wait for it, none lost
        assert [len(b) for b in batches] == [MIN_FLUSH_SPANS]
        assert len(rep.pending) == MIN_FLUSH_SPANS * 2
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert sum(len(b) for b in batches) == MIN_FLUSH_SPANS * 3
        assert c["sent"].value == MIN_FLUSH_SPANS * 3 and c["dropped"].value == 0
        rep.close()

    asyncio.run(main())


def test_full_buffer_drops_and_counts(monkeypatch):
    monkeypatch.setattr(tracing, "MAX_PENDING", 7)

    async def main():
        async def export(batch):
            await asyncio.sleep(3600)  # a collector that never answers

        rep, c = _reporter(asyncio.get_running_loop(), export)
        for i in range(40):
            rep.enqueue(_rec(i))
        await asyncio.sleep(0)
        # one batch taken by the stuck export, then the buffer fills at 7
        assert len(rep.pending) == 7
        assert c["dropped"].value == 40 - MIN_FLUSH_SPANS - 7
        rep.close()

    asyncio.run(main())


def test_failed_and_raising_exports_are_counted_and_the_next_batch_goes():
    async def main():
        calls = []

        async def export(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                return False
            if len(calls) == 2:
                raise ConnectionError("collector gone")
            return True

        rep, c = _reporter(asyncio.get_running_loop(), export)
        for i in range(MIN_FLUSH_SPANS * 3):
            rep.enqueue(_rec(i))
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls == [MIN_FLUSH_SPANS] * 3
        assert c["failed"].value == 2 and c["sent"].value == MIN_FLUSH_SPANS
        rep.close()

    asyncio.run(main())


def test_span_status_as_envoy_sets_it():
    st = tracing_otel.span_status
    assert st("SERVER", {"http.status_code": "200"}) is None
    assert st("SERVER", {"http.status_code": "404"}) is None
    assert st("CLIENT", {"http.status_code": "404"}) == tracing_otel.STATUS_ERROR
    assert st("SERVER", {"http.status_code": "503"}) == tracing_otel.STATUS_ERROR
    assert st("CLIENT", {"http.status_code": "0"}) is None  # no response: no status
    # gRPC: the server's fault only on a SERVER span, any non-OK on a CLIENT span
    assert st("SERVER", {"http.status_code": "200", "grpc.status_code": "5"}) == 0
    assert st("SERVER", {"http.status_code": "200", "grpc.status_code": "13"}) == 2
    assert st("CLIENT", {"grpc.status_code": "5", "http.status_code": "200"}) == 2
    assert st("SERVER", {"http.status_code": "200", "grpc.status_code": "0"}) == 0


def test_otlp_encoding_of_a_batch():
    dropped = _Counter()
    t = SimpleNamespace(service_name="front", reporter=SimpleNamespace(c={"dropped": dropped}))
    recs = [
        _rec(1, tags={"http.status_code": "503", "error": "true"}),
        SpanRecord(
            "abc",
            "00000000000000ff",
            "0000000000000001",
            "router h1 egress",
            "CLIENT",
            5,
            9,
            {"http.status_code": "200"},
            tracestate="k=v",
        ),
    ]
    recs.append(SpanRecord("not-hex", "00000000000000ff", None, "x", "SERVER", 1, 2))
    req = ts.ExportTraceServiceRequest.FromString(tracing_otel.OtelTracer.encode(t, recs))
    assert dropped.value == 1  # a record whose ids are not hex is left out, counted
    rs = req.resource_spans[0]
    res = {a.key: a.value.string_value for a in rs.resource.attributes}
    assert res["service.name"] == "front"
    spans = rs.instrumentation_library_spans[0].spans
    assert len(spans) == 2
    assert spans[0].kind == 2 and spans[0].status.code == 2 and not spans[0].parent_span_id
    assert spans[0].start_time_unix_nano == 1_000_001_000
    assert [(a.key, a.value.string_value) for a in spans[0].attributes] == [
        ("http.status_code", "503"),
        ("error", "true"),
    ]
    assert spans[1].kind == 3 and not spans[1].HasField("status")
    assert spans[1].trace_id == bytes(14) + bytes.fromhex("0abc")  # 64-bit: zero-extended
    assert spans[1].parent_span_id == bytes.fromhex("0000000000000001")
    assert spans[1].trace_state == "k=v"
