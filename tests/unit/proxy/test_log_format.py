"""proxy/log_format: the parts of a compiled access log format that need no stream (the
start time's formats, literals, %%, ENVIRONMENT, JSON literals and key order) and the
refusals at load, each by name."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs_pb2
from google.protobuf import json_format

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.log_format import compile_substitution, compile_text, start_time_getter

# 2026-12-03T17:32:20.634567891Z
NS = 1796319140 * 1_000_000_000 + 634_567_891


def test_start_time_default_and_envoy_extensions():
    assert start_time_getter("")(None, 0, NS) == "2026-12-03T17:32:20.634Z"
    g = start_time_getter("%Y/%m/%d %H:%M:%S.%3f|%f|%6f|%9f|%s|%s.%3f|%E3S|%1f")
    assert g(None, 0, NS) == (
        "2026/12/03 17:32:20.634|634567891|634567|634567891|1796319140|1796319140.634|20.634|6"
    )


def test_literals_percent_and_environment(monkeypatch):
    monkeypatch.setenv("SOFAMESH_LOG_TEST", "value-123")
    c = compile_text(
        "a 100%% %ENVIRONMENT(SOFAMESH_LOG_TEST):5% %ENVIRONMENT(NOPE_NOT_SET)% z\n", "p"
    )
    assert c.format(None, 0, NS) == "a 100% value - z\n"
    assert not c.capture


def _sfs(d: dict):
    return json_format.ParseDict(d, sfs_pb2.SubstitutionFormatString())


def test_json_literals_sorted_keys_typed_values():
    c = compile_substitution(
        _sfs(
            {
                "json_format": {
                    "z": 1,
                    "a": 1.5,
                    "m": True,
                    "n": None,
                    "l": [1, "x", {"k": "%START_TIME(%s)%"}],
                    "t": "%START_TIME(%Y)%",
                }
            }
        ),
        "p",
    )
    line = c.format(None, 0, NS)
    assert line.endswith("\n")
    assert line == '{"a":1.5,"l":[1,"x",{"k":"1796319140"}],"m":true,"n":null,"t":"2026","z":1}\n'
    assert list(json.loads(line)) == ["a", "l", "m", "n", "t", "z"]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%FOO_BAR%\n", r"unknown access log command %FOO_BAR%"),
        ("%REQ%\n", r"REQ requires parameters"),
        ("%START_TIME% %foo\n", r"no valid command at position 13"),
        ("%DYNAMIC_METADATA(a:b)%\n", r"%DYNAMIC_METADATA% is not implemented by sofamesh"),
        ("%PROTOCOL(x)%\n", r"%PROTOCOL% takes no parameters"),
        ("%REQ(A?B?C)%\n", r"at most one alternative"),
    ],
)
def test_refused_at_load_by_name(fmt, message):
    with pytest.raises(UnsupportedConfig, match=message):
        compile_text(fmt, "lst.log_format")


def test_formatter_extensions_refused_by_name():
    sfs = _sfs(
        {
            "text_format_source": {"inline_string": "%REQ_WITHOUT_QUERY(:PATH)%"},
            "formatters": [{"name": "envoy.formatter.req_without_query"}],
        }
    )
    with pytest.raises(UnsupportedConfig, match=r"formatters: .*req_without_query"):
        compile_substitution(sfs, "p")


def test_text_format_source_from_a_file(tmp_path):
    f = tmp_path / "fmt.txt"
    f.write_text("%START_TIME(%Y)% x\n")
    c = compile_substitution(_sfs({"text_format_source": {"filename": str(f)}}), "p")
    assert c.format(None, 0, NS) == "2026 x\n"
    with pytest.raises(UnsupportedConfig, match="cannot read"):
        compile_substitution(
            _sfs({"text_format_source": {"filename": str(tmp_path / "none")}}), "p"
        )


def test_a_line_that_cannot_be_formatted_is_counted_not_raised(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from sofamesh.proxy.access_log import FileAccessLog

    def boom(x, ms, ns):
        raise ValueError("bad stream")

    loop = asyncio.new_event_loop()
    try:
        lg = FileAccessLog(str(tmp_path / "a.log"), loop)
        lg.fmt = SimpleNamespace(format=boom)
        lg.tcp_fmt = SimpleNamespace(format=boom)
        lg.log(object(), 1.0)
        lg.log_tcp((1.0, 0.1, None, None, None, None, None, 0, 0, "", ""))
        assert lg.format_errors == 2 and lg.lines == []
        lg.close()
    finally:
        loop.close()
