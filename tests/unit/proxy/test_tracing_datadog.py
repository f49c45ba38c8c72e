"""proxy/tracing_datadog: the msgpack span encoder against the msgpack library, and the
context extraction / injection rules of dd-trace-cpp v2.1.1 that the Envoy comparison
(tests/integration/tracing/test_datadog.py) does not reach."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sofamesh._core.headers import HeaderList
from sofamesh.proxy import tracing_datadog as dd


def _tracer(rates: dict | None = None) -> dd.DatadogTracer:
    t = object.__new__(dd.DatadogTracer)
    t.rates = rates or {}
    t.rate_key = "service:edge,env:"
    return t


def _ctx(headers: list[tuple[str, str]], decision: bool = True, rates=None):
    c = dd.DatadogContext()
    c.decision = decision
    _tracer(rates).start_context(c, HeaderList([(k.encode(), v.encode()) for k, v in headers]))
    return c


def _hdrs(c) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in _tracer().context_headers(c)}


INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
INTS += [-1, -32, -33, -128, -129, -(2**31), -(2**63)]


def test_pack_span_decodes_as_msgpack():
    span = {f"i{n}": v for n, v in enumerate(INTS)}
    span["s"] = "x" * 31
    span["s32"] = "y" * 32
    span["s300"] = "é" * 300
    span["s70k"] = "z" * 70_000
    span["meta"] = {f"k{i}": str(i) for i in range(40)}
    span["metrics"] = {"a": 0.5, "b": -1.0, "c": 1e300}
    assert msgpack.unpackb(dd.pack_span(span), raw=False) == span


@given(
    st.dictionaries(
        st.text(max_size=40),
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.text(max_size=300),
            st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=20),
        ),
        max_size=20,
    )
)
def test_pack_span_round_trip(span):
    assert msgpack.unpackb(dd.pack_span(span), raw=False, strict_map_key=False) == span


def test_format_rate_as_dd_trace_cpp():
    assert [dd.format_rate(r) for r in (1.0, 0.0, 0.5, 0.25, 1 / 3)] == [
        "1",
        "0",
        "0.5",
        "0.25",
        "0.333333",
    ]


def test_new_trace_ids_and_headers():
    c = _ctx([])
    assert c.lo == c.sid and c.pid == 0 and c.hi & 0xFFFFFFFF == 0
    h = _hdrs(c)
    assert h["x-datadog-trace-id"] == str(c.lo) and h["x-datadog-parent-id"] == str(c.sid)
    assert h["x-datadog-tags"] == f"_dd.p.tid={c.hi:016x},_dd.p.dm=-0"
    assert h["traceparent"] == f"00-{c.hi:016x}{c.lo:016x}-{c.sid:016x}-01"
    assert h["tracestate"] == f"dd=s:1;p:{c.sid:016x};t.dm:-0"


def test_not_traced_is_a_user_drop():
    c = _ctx([("x-datadog-trace-id", "5"), ("x-datadog-parent-id", "6")], decision=False)
    assert (c.priority, c.lo, c.pid) == (-1, 5, 6)
    h = _hdrs(c)
    assert h["x-datadog-sampling-priority"] == "-1" and h["traceparent"].endswith("-00")
    assert "x-datadog-tags" not in h


def test_agent_rate_keeps_by_knuth_hash():
    kept = dropped = 0
    for _ in range(400):
        c = _ctx([], rates={"service:edge,env:": 0.5})
        assert c.mech == dd.MECH_AGENT and c.rate == 0.5
        assert (c.priority == 1) == ((c.lo * dd.KNUTH) & dd.U64 <= int(0.5 * float(dd.U64)))
        kept += c.priority == 1
        dropped += c.priority == 0
        assert ("_dd.p.ksr", "0.5") in c.ttags
        assert any(k == "_dd.p.dm" for k, _ in c.ttags) == (c.priority == 1)
    assert kept > 100 and dropped > 100


def test_default_rate_key_is_used_when_the_service_has_none():
    c = _ctx([], rates={"service:,env:": 0.0})
    assert (c.priority, c.mech, c.rate) == (0, dd.MECH_AGENT, 0.0)


@pytest.mark.parametrize(
    "headers",
    [
        [("x-datadog-trace-id", "-1"), ("x-datadog-parent-id", "2")],
        [("x-datadog-trace-id", "18446744073709551616"), ("x-datadog-parent-id", "2")],
        [
            ("x-datadog-trace-id", "1"),
            ("x-datadog-parent-id", "2"),
            ("x-datadog-sampling-priority", "x"),
        ],
        [("x-datadog-parent-id", "2")],  # a parent without a trace
        [("x-datadog-trace-id", "0"), ("x-datadog-parent-id", "2")],
    ],
)
def test_unreadable_datadog_context_starts_a_new_trace(headers):
    c = _ctx(headers)
    assert c.pid == 0 and c.lo == c.sid and c.priority == 1


def test_tags_header_rules():
    c = _ctx(
        [
            ("x-datadog-trace-id", "9"),
            ("x-datadog-parent-id", "8"),
            ("x-datadog-sampling-priority", "2"),
            ("x-datadog-tags", "_dd.p.tid=00000000000000ff,_dd.p.a=1,b=2"),
        ]
    )
    assert (c.hi, c.lo) == (0xFF, 9)
    assert c.ttags == [("_dd.p.tid", "00000000000000ff"), ("_dd.p.a", "1")]
    bad = _ctx(
        [("x-datadog-trace-id", "9"), ("x-datadog-parent-id", "8"), ("x-datadog-tags", "novalue")]
    )
    assert bad.span_tags == {"_dd.propagation_error": "decoding_error"}
    big = _ctx(
        [
            ("x-datadog-trace-id", "9"),
            ("x-datadog-parent-id", "8"),
            ("x-datadog-tags", "_dd.p.x=" + "a" * 600),
        ]
    )
    assert big.span_tags == {"_dd.propagation_error": "extract_max_size"}
    tid = _ctx(
        [
            ("x-datadog-trace-id", "9"),
            ("x-datadog-parent-id", "8"),
            ("x-datadog-tags", "_dd.p.tid=xyz"),
        ]
    )
    assert tid.span_tags == {"_dd.propagation_error": "malformed_tid xyz"}


def test_tracestate_dd_entry_is_cut_at_256():
    long = ";".join(f"k{i}:{'v' * 20}" for i in range(20))
    c = _ctx(
        [
            ("traceparent", "00-0000000000000000000000000000000a-000000000000000b-01"),
            ("tracestate", f"dd={long},other=1"),
        ]
    )
    st_ = _hdrs(c)["tracestate"]
    head, _, rest = st_.partition(",")
    assert len(head) <= 256 and head.startswith("dd=s:1;p:") and rest == "other=1"
    assert c.span_tags == {"_dd.parent_id": "0000000000000000"}


def test_w3c_priority_sign_must_agree():
    # flags say sampled, dd says drop: the flags win; both drop: dd's value
    c = _ctx(
        [("traceparent", "00-" + "0" * 31 + "1-" + "0" * 15 + "2-01"), ("tracestate", "dd=s:-1")]
    )
    assert c.priority == 1
    c = _ctx(
        [("traceparent", "00-" + "0" * 31 + "1-" + "0" * 15 + "2-00"), ("tracestate", "dd=s:-1")]
    )
    assert c.priority == -1
