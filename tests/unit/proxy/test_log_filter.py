"""proxy/log_filter: comparisons, and/or, response flags on stream-like objects and tcp_proxy
entries, and the refusals at load, each by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.log_filter import FilterContext, compile_filter


def _f(d: dict, tcp: bool = False):
    msg = json_format.ParseDict(d, accesslog_pb2.AccessLogFilter())
    return compile_filter(msg, "al.filter", FilterContext(tcp=tcp))


def _cmp(op: str, v: int) -> dict:
    return {"comparison": {"op": op, "value": {"default_value": v, "runtime_key": "k"}}}


def _s(status: int, flags: str = "-"):
    return SimpleNamespace(resp_status=status, resp_flags=flags, filter_state=None)


def test_comparisons_and_logic():
    ge = _f({"status_code_filter": _cmp("GE", 500)})
    assert ge(_s(503), 1) and not ge(_s(200), 1)
    ne = _f({"status_code_filter": _cmp("NE", 200)})
    assert ne(_s(404), 1) and not ne(_s(200), 1)
    slow = _f({"duration_filter": _cmp("GE", 100)})
    assert slow(_s(200), 100.7) and not slow(_s(200), 99.9)
    both = _f(
        {
            "and_filter": {
                "filters": [
                    {"status_code_filter": _cmp("EQ", 200)},
                    {"duration_filter": _cmp("LE", 5)},
                ]
            }
        }
    )
    assert both(_s(200), 3) and not both(_s(200), 6) and not both(_s(500), 3)
    either = _f(
        {
            "or_filter": {
                "filters": [{"status_code_filter": _cmp("EQ", 404)}, {"response_flag_filter": {}}]
            }
        }
    )
    assert either(_s(404), 1) and either(_s(503, "UF"), 1) and not either(_s(200), 1)


def test_response_flags_http_and_tcp():
    uf_or_uh = _f({"response_flag_filter": {"flags": ["UF", "UH"]}})
    assert uf_or_uh(_s(503, "URX,UF"), 1) and not uf_or_uh(_s(503, "UO"), 1)
    tcp_any = _f({"response_flag_filter": {}}, tcp=True)
    entry = (1.0, 0.1, None, None, None, None, "c", 0, 0, "UF", "")
    assert tcp_any(entry, 100.0) and not tcp_any(entry[:9] + ("", ""), 100.0)
    tcp_status = _f({"status_code_filter": _cmp("EQ", 0)}, tcp=True)
    assert tcp_status(entry, 100.0)


@pytest.mark.parametrize(
    ("d", "tcp", "message"),
    [
        ({"response_flag_filter": {"flags": ["XX"]}}, False, r"unknown response flag 'XX'"),
        ({"metadata_filter": {}}, False, r"metadata_filter is not implemented by sofamesh"),
        ({"log_type_filter": {}}, False, r"log_type_filter is not implemented by sofamesh"),
        (
            {"header_filter": {"header": {"name": "x", "present_match": True}}},
            True,
            r"header filter on a tcp_proxy access log",
        ),
        ({"grpc_status_filter": {}}, True, r"gRPC status filter on a tcp_proxy access log"),
    ],
)
def test_refused_at_load_by_name(d, tcp, message):
    with pytest.raises(UnsupportedConfig, match=message):
        _f(d, tcp)
