"""envoy.access_loggers.stdout / stderr against Envoy 1.40: the same default-format line for
the same requests, on the process's standard output or error."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.http_filters.conftest import typed

LINE = re.compile(r'^\[(\S+)\] "(.*)$')


def _lines(side, n: int) -> list[str]:
    deadline = time.monotonic() + 15  # both flush their access log batch within a second
    while True:
        text = side.proc.log_path.read_text(errors="replace")
        got = [m.group(2) for m in map(LINE.match, text.splitlines()) if m]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _fields(rest: str) -> list[str]:
    """The line after its start time, without what differs by nature: duration, service
    time, request id, the upstream's port."""
    parts = re.findall(r'"[^"]*"|\S+', '"' + rest)
    # "METHOD PATH PROTO" CODE FLAGS RX TX DURATION SERVICE_TIME "XFF" "UA" "RID" "AUTH" "HOST"
    parts[5] = parts[6] = "N"
    parts[9] = '"RID"' if parts[9] != '"-"' else parts[9]
    parts[10] = re.sub(r":\d+", ":PORT", parts[10])  # authority: each proxy's port
    parts[11] = re.sub(r":\d+", ":PORT", parts[11])
    return parts


@pytest.mark.parametrize("stream", ["Stdout", "Stderr"])
def test_stream_access_log_like_envoy(pair, stream):
    logger = {
        "name": f"envoy.access_loggers.{stream.lower()}",
        "typed_config": typed(f"envoy.extensions.access_loggers.stream.v3.{stream}AccessLog"),
    }
    envoy, ours = pair(http_filters=[], hcm_extra={"access_log": [logger]})
    for side in (envoy, ours):
        side.request("GET", "/a?x=1", {"user-agent": "ua/1", "x-forwarded-for": "10.0.0.1"})
        side.request("POST", "/b", {"x-resp-status": "503"}, body=b"hello")
        side.request("GET", "/c", {"x-resp-size": "1000", "x-request-id": "fixed-id"})
    e, o = _lines(envoy, 3), _lines(ours, 3)
    assert len(e) == 3, envoy.proc.log_text()
    assert [_fields(x) for x in o] == [_fields(x) for x in e]
    assert o[1].startswith('POST /b HTTP/1.1" 503 - 5 ')
    assert '"fixed-id"' in o[2]
