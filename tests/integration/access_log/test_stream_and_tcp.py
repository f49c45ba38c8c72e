"""envoy.access_loggers.stdout / stderr with `log_format`, and file loggers on tcp_proxy,
against Envoy 1.40: the same bootstrap and traffic through both, the lines compared."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.access_log.conftest import FILE
from tests.integration.http_filters.conftest import ScriptedUpstream, _distinct, typed
from tests.support.envoy import ProxyProcess

STREAM = "envoy.extensions.access_loggers.stream.v3.{}AccessLog"


def _tagged(proc: ProxyProcess, tag: str, n: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        text = proc.log_path.read_text(errors="replace")
        got = [x[len(tag) :] for x in text.splitlines() if x.startswith(tag)]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("stream", ["Stdout", "Stderr"])
def test_stream_logger_with_log_format_like_envoy(alpair, stream):
    fmt = {
        "json_format": {
            "tag": "ALOG",
            "code": "%RESPONSE_CODE%",
            "path": "%REQ(:PATH)%",
            "ua": "%REQ(USER-AGENT)%",
            "rx": "%BYTES_RECEIVED%",
        }
    }
    logger = {
        "name": f"envoy.access_loggers.{stream.lower()}",
        "typed_config": typed(STREAM.format(stream), log_format=fmt),
    }
    envoy, ours = alpair([logger], http_filters=[])
    for side in (envoy, ours):
        side.request("GET", "/a", {"user-agent": "ua/1"})
        side.request("POST", "/b", {"x-resp-status": "503"}, body=b"hello")
    e = _tagged(envoy.proc, '{"code"', 2)
    o = _tagged(ours.proc, '{"code"', 2)
    assert len(e) == 2, envoy.proc.log_text()
    assert o == e
    assert json.loads('{"code"' + o[1]) == {
        "code": 503,
        "path": "/b",
        "rx": 5,
        "tag": "ALOG",
        "ua": None,
    }


TCP_OPS = (
    "%UPSTREAM_CLUSTER%|%BYTES_RECEIVED%|%BYTES_SENT%|%RESPONSE_FLAGS%|%RESPONSE_FLAGS_LONG%|"
    "%UPSTREAM_HOST%|%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|"
    "%REQ(:PATH)%|%PROTOCOL%|%RESPONSE_CODE%|%ROUTE_NAME%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|"
    "%START_TIME%|%DURATION%\n"
)


def _tcp_bootstrap(port: int, admin: int, upstream: int, logs: list[Path]) -> dict:
    def logger(i: int, fmt: dict | None, filt: dict | None = None) -> dict:
        cfg = {"@type": FILE, "path": str(logs[i])}
        if fmt:
            cfg["log_format"] = fmt
        out = {"name": "envoy.access_loggers.file", "typed_config": cfg}
        if filt:
            out["filter"] = filt
        return out

    tcp = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": "backend",
        "access_log": [
            logger(0, {"text_format_source": {"inline_string": TCP_OPS}}),
            logger(1, None),  # Envoy's default format on a TCP connection
            logger(2, {"json_format": {"flags": "%RESPONSE_FLAGS%", "rx": "%BYTES_RECEIVED%"}}),
            # only failed connections
            logger(3, {"text_format": "%RESPONSE_FLAGS%\n"}, {"response_flag_filter": {}}),
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "tcp",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def _start(kind: str, tmp: Path, upstream: int) -> tuple[ProxyProcess, int, list[Path]]:
    port, admin = _distinct(2, {upstream})
    work = tmp / kind
    work.mkdir()
    logs = [work / f"tcp{i}.log" for i in range(4)]
    boot = _tcp_bootstrap(port, admin, upstream, logs)
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), boot, work)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
    proc.start()
    return proc, port, logs


def _lines(path: Path, n: int, settle: float = 0.0) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        got = path.read_text().splitlines() if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if settle:
        time.sleep(settle)
        got = path.read_text().splitlines() if path.exists() else []
    return got


def _exchange(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET /tcp HTTP/1.1\r\nhost: t\r\n\r\n")
        c.shutdown(socket.SHUT_WR)  # the upstream answers, sees the end and closes
        while c.recv(65536):
            pass


def _refused(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass


def _mask(line: str) -> str:
    f = line.split("|")
    assert re.match(r"^\d{4}-\d\d-\d\dT[\d:]+\.\d{3}Z$", f[13]), f[13]
    assert f[14].isdigit(), f[14]
    f[13] = f[14] = "X"
    return re.sub(r":\d+\b", ":P", "|".join(f))


def test_tcp_proxy_file_loggers_like_envoy(tmp_path):
    up = ScriptedUpstream().start()
    dead = socket.socket()  # a port with nothing listening: the connect is refused
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    procs = []
    try:
        sides = {}
        for kind in ("envoy", "sofamesh"):
            proc, port, logs = _start(kind, tmp_path, up.port)
            procs.append(proc)
            sides[kind] = (port, logs)
            _exchange(port)
        # the failing case: a second pair of proxies whose cluster's port refuses
        for kind in ("envoy", "sofamesh"):
            proc, port, logs = _start(kind + "-dead", tmp_path, dead_port)
            procs.append(proc)
            sides[kind + "-dead"] = (port, logs)
            _refused(port)
        e_ok, o_ok = sides["envoy"][1], sides["sofamesh"][1]
        e_bad, o_bad = sides["envoy-dead"][1], sides["sofamesh-dead"][1]

        def default(line: str) -> str:
            line = re.sub(r"^\[[^]]+\]", "[T]", line)
            line = re.sub(r" (\d+) (\d+|-) \"", ' N N "', line, count=1)
            return re.sub(r":\d+", ":P", line)

        # each side's start-up probes (connections that send nothing) are logged too, a
        # number that varies: the distinct lines are compared
        def distinct(path: Path, mask=lambda x: x) -> list[str]:
            return sorted({mask(x) for x in _lines(path, 0)})  # waited for above

        # every logger's line of the exchanged connection and of the refused one is there
        exchanged = ("|30|100|", " 30 100 ", '"rx":30')
        for logs, marks in (
            (e_ok, exchanged),
            (o_ok, exchanged),
            (e_bad, ("|UF|", " UF ", '"UF"', "UF")),
            (o_bad, ("|UF|", " UF ", '"UF"', "UF")),
        ):
            for i, mark in enumerate(marks):
                deadline = time.monotonic() + 15
                while not any(mark in x for x in _lines(logs[i], 0)):
                    assert time.monotonic() < deadline, (i, _lines(logs[i], 0))
                    time.sleep(0.1)
        time.sleep(0.5)  # the flag-only logger of the exchanged connection writes nothing

        # The start-up probes (connections that close at once) race the upstream connect,
        # differently in each proxy: the exchanged connection's lines (30 bytes in, 100
        # out) and the refused connections' lines (UF) are compared, and the flag-only
        # logger whole.
        exchanged = (*exchanged, "")
        for e, o in ((e_ok, o_ok), (e_bad, o_bad)):
            for i, m in ((0, _mask), (1, default), (2, str), (3, str)):
                mark = "UF" if o is o_bad else exchanged[i]
                got_o = [x for x in distinct(o[i], m) if mark in x]
                got_e = [x for x in distinct(e[i], m) if mark in x]
                assert got_o == got_e, i
                assert got_o or (i == 3 and o is o_ok), i
        ok = distinct(o_ok[0], _mask)
        assert "backend|30|100|-|-|127.0.0.1:P|127.0.0.1:P|127.0.0.1|-|-|0|-|-|X|X" in ok
        assert (
            "backend|0|0|UF|UpstreamConnectionFailure|127.0.0.1:P|127.0.0.1:P|127.0.0.1|-|-|0|-|"
            "delayed_connect_error:_Connection_refused|X|X"
        ) in distinct(o_bad[0], _mask)
        assert distinct(o_bad[3]) == ["UF"] and _lines(o_ok[3], 0) == []
    finally:
        for p in procs:
            p.stop()
        up.stop()
        dead.close()
