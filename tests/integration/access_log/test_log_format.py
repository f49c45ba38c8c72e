"""envoy.access_loggers.file with `log_format` against Envoy 1.40: the same bootstrap and the
same requests through both, the lines compared field by field. Only what differs by nature
is masked (times, durations, ports, connection ids, generated request ids), and a masked
field must still have the shape Envoy gives it (a number, a time, an address)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.access_log.conftest import file_log

# fields in the order of the format; each is masked by `_mask` according to its command
OPS = [
    "%START_TIME%",
    "%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s %6f)%",
    "%REQ(:METHOD)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%REQ(:PATH):4%",
    "%REQ(:AUTHORITY)%",
    "%REQ(USER-AGENT)%",
    "%REQ(X-FORWARDED-FOR)%",
    "%REQ(X-REQUEST-ID)%",
    "%REQ(X-MULTI)%",
    "%REQ(X-ABSENT)%",
    "%PROTOCOL%",
    "%RESPONSE_CODE%",
    "%RESPONSE_CODE_DETAILS%",
    "%RESPONSE_FLAGS%",
    "%RESPONSE_FLAGS_LONG%",
    "%BYTES_RECEIVED%",
    "%BYTES_SENT%",
    "%DURATION%",
    "%REQUEST_DURATION%",
    "%RESPONSE_DURATION%",
    "%RESPONSE_TX_DURATION%",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "%RESP(CONTENT-TYPE)%",
    "%RESP(X-CUSTOM)%",
    "%RESP(SERVER)%",
    "%TRAILER(X-TRAILER)%",
    "%UPSTREAM_HOST%",
    "%UPSTREAM_CLUSTER%",
    "%UPSTREAM_LOCAL_ADDRESS%",
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_PORT%",
    "%REQUESTED_SERVER_NAME%",
    "%ROUTE_NAME%",
    "%HOSTNAME%",
    "%CONNECTION_ID%",
    "%CONNECTION_TERMINATION_DETAILS%",
    "%ENVIRONMENT(HOME)%",
    "%ENVIRONMENT(SOFAMESH_SURELY_UNSET_VAR)%",
    "100%%",
]

# Istio's default proxy access log format (meshConfig.accessLogFormat unset)
ISTIO = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

VHOST = {
    "routes": [
        {"name": "direct", "match": {"prefix": "/direct"}, "direct_response": {"status": 202}},
        {"name": "api", "match": {"prefix": "/api"}, "route": {"cluster": "backend"}},
        {"match": {"prefix": "/plain"}, "route": {"cluster": "backend"}},
        {
            "name": "rewritten",
            "match": {"prefix": "/old"},
            "route": {"cluster": "backend", "prefix_rewrite": "/new"},
        },
    ]
}

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIME2 = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3} \d{10} \d{6}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _mask(op: str, v):
    """The value with what differs by nature replaced; asserts its shape."""
    if v in ("-", None, ""):
        return v
    s = str(v)
    if op == "%START_TIME%":
        assert TIME.match(s), s
        return "T"
    if op.startswith("%START_TIME("):
        assert TIME2.match(s), s
        return "T"
    if op in (
        "%DURATION%",
        "%REQUEST_DURATION%",
        "%RESPONSE_DURATION%",
        "%RESPONSE_TX_DURATION%",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "%CONNECTION_ID%",
    ):
        assert s.isdigit(), (op, s)
        return "N"
    if op == "%REQ(X-REQUEST-ID)%" and UUID.match(s):
        return "UUID"
    if op == "%DOWNSTREAM_LOCAL_PORT%":
        assert s.isdigit(), s
        return "P"
    if op in (
        "%REQ(:AUTHORITY)%",
        "%UPSTREAM_HOST%",
        "%UPSTREAM_LOCAL_ADDRESS%",
        "%DOWNSTREAM_REMOTE_ADDRESS%",
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
        "%DOWNSTREAM_LOCAL_ADDRESS%",
    ):
        assert re.search(r":\d+$", s), (op, s)
        return re.sub(r":\d+$", ":P", s)
    return v


def _requests(side) -> None:
    side.request("GET", "/api/a?x=1", {"user-agent": "ua/1", "x-forwarded-for": "10.0.0.1"})
    side.request("POST", "/api/b", {"x-resp-status": "503", "x-multi": "1"}, body=b"hello")
    side.request(
        "GET",
        "/plain/c",
        [
            ("x-resp-size", "1000"),
            ("x-request-id", "fixed-id"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("x-resp-header", "x-custom=yes"),
        ],
    )
    side.request("GET", "/direct/d", {"user-agent": "ua/2"})
    side.request("GET", "/nowhere", {})
    side.request("GET", "/old/e", {"x-resp-trailers": "1"})
    side.request("HEAD", "/api/h", {"x-resp-type": "application/json"})


N = 7


def _text_fields(line: str) -> list:
    vals = line.split("|")
    assert len(vals) == len(OPS), line
    return [_mask(op, v) for op, v in zip(OPS, vals, strict=True)]


def test_text_format_many_commands_like_envoy(alpair):
    fmt = {"text_format_source": {"inline_string": "|".join(OPS) + "\n"}}
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        _requests(side)
    e, o = envoy.lines(0, N), ours.lines(0, N)
    assert len(e) == N, envoy.proc.log_text()
    assert len(o) == N, ours.proc.log_text()
    for le, lo in zip(e, o, strict=True):
        fe, fo = _text_fields(le), _text_fields(lo)
        diff = [(op, a, b) for op, a, b in zip(OPS, fe, fo, strict=True) if a != b]
        assert not diff, (le, lo)
    # what a user reads in sofamesh's own lines
    assert o[1].split("|")[2:4] == ["POST", "/api/b"]
    assert "|503|via_upstream|-|-|5|" in o[1]
    assert "|fixed-id|a|-|" in o[2]
    assert "|NR|NoRouteFound|" in o[4]
    assert o[5].split("|")[OPS.index("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%")] == "/old/e"
    assert o[5].split("|")[OPS.index("%REQ(:PATH):4%")] == "/new"


def test_istio_default_format_like_envoy(alpair):
    fmt = {"text_format_source": {"inline_string": ISTIO}}
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        _requests(side)
    e, o = envoy.lines(0, N), ours.lines(0, N)
    assert len(e) == N and len(o) == N, (e, o)

    def norm(line: str) -> str:
        line = TIME.sub("T", line[1:25]) + line[25:]
        line = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "T", line)
        line = re.sub(r":\d+\b", ":P", line)
        line = re.sub(r'" (\d+) (\d+) (\d+) (\d+|-) "', r'" \1 \2 N N "', line)
        return re.sub(r'"[0-9a-f]{8}-[0-9a-f-]{27}"', '"UUID"', line)

    assert [norm(x) for x in o] == [norm(x) for x in e]


JSON_OPS = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "ua": "%REQ(USER-AGENT)%",
    "absent": "%REQ(X-ABSENT)%",
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "route": "%ROUTE_NAME%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "port": "%DOWNSTREAM_LOCAL_PORT%",
    "mixed": "%REQ(:METHOD)% %REQ(X-ABSENT)% %RESPONSE_CODE%",
    "epoch": "%START_TIME(%s)%",
    "pct": "%%",
    "env": "%ENVIRONMENT(SOFAMESH_SURELY_UNSET_VAR)%",
}


def _json_case(alpair, omit: bool):
    fmt: dict = {
        "json_format": {
            **JSON_OPS,
            "nested": {"b": "%PROTOCOL%", "a": "%RESPONSE_CODE%", "c": "%REQ(X-ABSENT)%"},
            "lit_num": 7,
            "lit_float": 1.5,
            "lit_bool": True,
            "lit_null": None,
            "list": [1, "%RESPONSE_CODE%", "x"],
        },
        "omit_empty_values": omit,
        "content_type": "application/json",
    }
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        _requests(side)
    e, o = envoy.lines(0, N), ours.lines(0, N)
    assert len(e) == N and len(o) == N, (e, o)
    for le, lo in zip(e, o, strict=True):
        # the same text once masked: key order (sorted) and typed values included
        je, jo = json.loads(le), json.loads(lo)
        assert list(jo) == list(je), (le, lo)
        for obj in (je, jo):
            for k, op in JSON_OPS.items():
                if k in obj and k != "epoch":
                    obj[k] = _mask(op, obj[k])
            if "epoch" in obj:
                assert re.match(r"^\d{10}$", obj["epoch"]), obj["epoch"]
                obj["epoch"] = "E"
        assert jo == je, (le, lo)
    return o


def test_json_format_like_envoy(alpair):
    o = _json_case(alpair, omit=False)
    first = json.loads(o[0])
    assert first["status"] == 200 and first["absent"] is None and first["method"] == "GET"
    assert first["mixed"] == "GET - 200" and first["nested"] == {
        "a": 200,
        "b": "HTTP/1.1",
        "c": None,
    }


def test_json_format_omit_empty_values_like_envoy(alpair):
    o = _json_case(alpair, omit=True)
    first = json.loads(o[0])
    assert "absent" not in first and first["mixed"] == "GET  200"
    assert first["nested"] == {"a": 200, "b": "HTTP/1.1"}


def test_text_omit_empty_values_like_envoy(alpair):
    fmt = {
        "text_format_source": {
            "inline_string": "[%REQ(X-ABSENT)%] [%ROUTE_NAME%] [%UPSTREAM_HOST%] %RESPONSE_CODE%\n"
        },
        "omit_empty_values": True,
    }
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        side.request("GET", "/direct/x", {})
        side.request("GET", "/plain/y", {})
    e, o = envoy.lines(0, 2), ours.lines(0, 2)
    assert [re.sub(r":\d+", ":P", x) for x in o] == [re.sub(r":\d+", ":P", x) for x in e]
    assert o[0] == "[] [direct] [] 202"


def test_datadog_example_stdout_format_like_envoy(alpair):
    """The log_format of Envoy's datadog-tracing example (its stdout logger's), through a file
    logger on both proxies: the lines match but for times, durations, ids and ports."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "fixtures" / "envoy-examples"
    doc = yaml.safe_load((root / "datadog-tracing_envoy.yaml").read_text())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    fmt = hcm["typed_config"]["access_log"][0]["typed_config"]["log_format"]
    assert "%RESP(X-AMZN-RequestId)%" in fmt["text_format_source"]["inline_string"]
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        _requests(side)
        side.request("GET", "/api/dd", {"x-resp-header": "x-amzn-requestid=req-7"})
    e, o = envoy.lines(0, N + 1), ours.lines(0, N + 1)
    assert len(e) == N + 1 and len(o) == N + 1, (e, o)

    def norm(line: str) -> str:
        line = re.sub(r"^\[[^]]+\]", "[T]", line)
        line = re.sub(r'" (\d+) (\S+) (\d+) (\d+) (\d+|-) (\d+|-) "', r'" \1 \2 \3 \4 N N "', line)
        line = re.sub(r":\d+\b", ":P", line)
        return re.sub(r'"[0-9a-f]{8}-[0-9a-f-]{27}"', '"UUID"', line)

    assert [norm(x) for x in o] == [norm(x) for x in e]
    assert '"req-7"' in o[-1]


def test_text_format_over_http2_like_envoy(alpair):
    """The same commands for requests that arrive over HTTP/2 (h2c, prior knowledge)."""
    from tests.support.h2_peers import h2_exchange

    fmt = {"text_format_source": {"inline_string": "|".join(OPS) + "\n"}}
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):

        def req(method: str, path: str, extra: list, body: bytes | None = None, port=side.port):
            base = [(":method", method), (":scheme", "http"), (":authority", "h2.local:80")]
            h2_exchange(port, [*base, (":path", path), *extra], body)

        req("GET", "/api/a", [("user-agent", "h2/1"), ("x-multi", "a"), ("x-multi", "b")])
        req("POST", "/api/b", [("x-resp-status", "503"), ("content-length", "5")], b"hello")
        req("GET", "/nowhere", [])
        req("GET", "/direct/x", [])
    e, o = envoy.lines(0, 4), ours.lines(0, 4)
    assert len(e) == 4 and len(o) == 4, (e, o)
    for le, lo in zip(e, o, strict=True):
        fe, fo = _text_fields(le), _text_fields(lo)
        diff = [(op, a, b) for op, a, b in zip(OPS, fe, fo, strict=True) if a != b]
        assert not diff, (le, lo)
    assert o[0].split("|")[OPS.index("%PROTOCOL%")] == "HTTP/2"


def test_response_trailers_like_envoy(alpair):
    """TRAILER() reads the upstream's trailers once the cluster parses them
    (http_protocol_options.enable_trailers), as Envoy does."""
    opts = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}},
        }
    }
    fmt = {"text_format": "%REQ(:PATH)% %TRAILER(X-TRAILER)% %TRAILER(X-NONE)% %RESP(SERVER)%\n"}
    envoy, ours = alpair(
        [file_log(0, fmt)],
        http_filters=[],
        virtual_host=VHOST,
        cluster_extra={"typed_extension_protocol_options": opts},
    )
    for side in (envoy, ours):
        side.request("GET", "/api/t", {"x-resp-trailers": "1"})
        side.request("GET", "/api/n", {})
    assert ours.lines(0, 2) == envoy.lines(0, 2) == ["/api/t t - envoy", "/api/n - - envoy"]


def test_deprecated_file_formats_like_envoy(alpair):
    """FileAccessLog's deprecated `format` and `json_format`, which Envoy 1.40 still takes."""
    logs = [
        file_log(0, format="%REQ(:PATH)% %RESPONSE_CODE% %ROUTE_NAME%\n"),
        file_log(1, json_format={"p": "%REQ(:PATH)%", "c": "%RESPONSE_CODE%", "u": "%REQ(X-U)%"}),
    ]
    envoy, ours = alpair(logs, http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        side.request("GET", "/api/x", {"x-u": "1"})
        side.request("GET", "/direct/y", {})
    assert ours.lines(0, 2) == envoy.lines(0, 2) == ["/api/x 200 api", "/direct/y 202 direct"]
    assert ours.lines(1, 2) == envoy.lines(1, 2)
    assert ours.lines(1, 2)[0] == '{"c":200,"p":"/api/x","u":"1"}'


def test_malformed_request_line_like_envoy(alpair):
    """A request whose head does not parse is logged as Envoy logs it (DPE, 400, no request
    fields); RESPONSE_CODE_DETAILS (Envoy's codec error detail) is not known to sofamesh."""
    ops = [op for op in OPS if op != "%RESPONSE_CODE_DETAILS%"]
    fmt = {"text_format_source": {"inline_string": "|".join(ops) + "\n"}}
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        side.raw(b"GET /a HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
    e, o = envoy.lines(0, 1), ours.lines(0, 1)
    assert len(e) == 1 and len(o) == 1, (e, o)
    fe = [_mask(op, v) for op, v in zip(ops, e[0].split("|"), strict=True)]
    fo = [_mask(op, v) for op, v in zip(ops, o[0].split("|"), strict=True)]
    assert fo == fe, (e, o)
    assert "|400|DPE|DownstreamProtocolError|" in o[0]


def test_upstream_cluster_alt_stat_name_like_envoy(alpair):
    """UPSTREAM_CLUSTER is the cluster's alt_stat_name when it has one, _RAW its name."""
    fmt = {"text_format": "%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%\n"}
    envoy, ours = alpair(
        [file_log(0, fmt)], http_filters=[], cluster_extra={"alt_stat_name": "alt"}
    )
    for side in (envoy, ours):
        side.request("GET", "/x", {})
    assert ours.lines(0, 1) == envoy.lines(0, 1) == ["alt backend"]


def test_json_escaping_like_envoy(alpair):
    """Header values with quotes, backslashes, tabs and UTF-8 bytes in a JSON line."""
    fmt = {"json_format": {"v": "%REQ(X-V)%", "m": "a %REQ(X-V)% b"}}
    envoy, ours = alpair([file_log(0, fmt)], http_filters=[], virtual_host=VHOST)
    values = ['say "hi"', "back\\slash", "tab\there", "caf\u00e9 \u4e2d".encode().decode("latin-1")]
    for side in (envoy, ours):
        for v in values:
            side.request("GET", "/api/j", [("x-v", v)])
    assert len(envoy.lines(0, len(values))) == len(ours.lines(0, len(values))) == len(values)
    assert ours.logs[0].read_bytes() == envoy.logs[0].read_bytes()  # byte for byte
    assert json.loads(ours.lines(0, 1)[0])["v"] == 'say "hi"'


def test_utf8_literals_and_keys_like_envoy(alpair):
    """Non-ASCII text in the format itself (a literal, a JSON key) is written as UTF-8."""
    logs = [
        file_log(0, {"text_format": "%REQ(:PATH)% \u2192 %RESPONSE_CODE% \u00e9\n"}),
        file_log(
            1, {"json_format": {"cl\u00e9": "%REQ(X-V)%", "\u4e2d": "\u20ac %RESPONSE_CODE%"}}
        ),
    ]
    envoy, ours = alpair(logs, http_filters=[], virtual_host=VHOST)
    for side in (envoy, ours):
        side.request("GET", "/api/u", [("x-v", "\u20ac".encode().decode("latin-1"))])
    for i in (0, 1):
        assert len(envoy.lines(i, 1)) == len(ours.lines(i, 1)) == 1
        assert ours.logs[i].read_bytes() == envoy.logs[i].read_bytes()
    assert ours.logs[0].read_bytes() == "/api/u \u2192 200 \u00e9\n".encode()
