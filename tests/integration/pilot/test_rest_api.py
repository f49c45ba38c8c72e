"""The open registry REST API: behaviour, TTLs, durability, and agreement with openapi.yaml."""

from __future__ import annotations

import time
from importlib import resources

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.pilot.conftest import PilotProcess, http

SPEC = yaml.safe_load((resources.files("sofamesh.pilot") / "openapi.yaml").read_text())


def _nullable(node):
    """OpenAPI 3.0 `nullable: true` -> JSON Schema's type list."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        node.pop("example", None)
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


ROOT = _nullable(SPEC)


def schema_for(ref_or_schema: dict) -> dict:
    return {**ref_or_schema, "components": ROOT["components"]}


def check(schema: dict, value) -> None:
    jsonschema.validate(value, schema_for(schema), format_checker=jsonschema.FormatChecker())


def response_schema(path: str, method: str, status: int) -> dict | None:
    op = ROOT["paths"][path][method]
    resp = op["responses"].get(str(status))
    assert resp is not None, (
        f"{method.upper()} {path} answered {status}, not declared in openapi.yaml"
    )
    if "$ref" in resp:
        resp = ROOT["components"]["responses"][resp["$ref"].rsplit("/", 1)[-1]]
    content = resp.get("content")
    return content["application/json"]["schema"] if content else None


def call(pilot, method: str, template: str, path: str, body=None):
    status, out = http(method.upper(), pilot.api + path, body)
    schema = response_schema(template, method, status)
    if schema is not None:
        check(schema, out)
    return status, out


INST = "/v1/services/{service}/instances/{instance_id}"


def test_every_operation_matches_the_spec(pilot):
    s, out = call(
        pilot,
        "put",
        INST,
        "/v1/services/reviews/instances/r1",
        {
            "address": "127.0.0.1",
            "port": 8080,
            "protocol": "http",
            "labels": {"v": "1"},
            "ttl_seconds": 10,
        },
    )
    assert s == 201 and out["instance_id"] == "r1" and out["labels"] == {"v": "1"}
    s, out = call(
        pilot,
        "put",
        INST,
        "/v1/services/reviews/instances/r1",
        {"address": "::1", "port": 8081, "weight": 5, "locality": {"zone": "z1"}},
    )
    assert s == 200 and out["address"] == "::1" and out["weight"] == 5
    s, out = call(pilot, "put", INST + "/heartbeat", "/v1/services/reviews/instances/r1/heartbeat")
    assert s == 200
    s, out = call(pilot, "get", "/v1/services", "/v1/services")
    assert s == 200 and out["services"] == [
        {"name": "reviews", "namespace": "default", "instances": 1, "registries": ["api"]}
    ]
    s, out = call(pilot, "get", "/v1/services/{service}", "/v1/services/reviews")
    assert s == 200 and [i["port"] for i in out["instances"]] == [8081]
    assert out["instances"][0]["locality"] == {"region": "", "zone": "z1", "sub_zone": ""}
    s, out = call(pilot, "get", "/v1/services/{service}", "/v1/services/nosuch")
    assert s == 404 and out["field"] == "service"
    s, _ = call(pilot, "delete", INST, "/v1/services/reviews/instances/r1")
    assert s == 204
    s, out = call(pilot, "delete", INST, "/v1/services/reviews/instances/r1")
    assert s == 404
    s, out = call(pilot, "put", INST + "/heartbeat", "/v1/services/reviews/instances/r1/heartbeat")
    assert s == 404 and out["field"] == "instance_id"
    s, out = call(
        pilot,
        "put",
        INST,
        "/v1/services/bad*name/instances/r1",
        {"address": "127.0.0.1", "port": 1},
    )
    assert s == 400 and out["field"] == "service"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"port": 80}, "address"),
        ({"address": "not-an-ip", "port": 80}, "address"),
        ({"address": "127.0.0.1"}, "port"),
        ({"address": "127.0.0.1", "port": 70000}, "port"),
        ({"address": "127.0.0.1", "port": "80"}, "port"),
        ({"address": "127.0.0.1", "port": 80, "protocol": "smtp"}, "protocol"),
        ({"address": "127.0.0.1", "port": 80, "labels": {"a": 1}}, "labels.a"),
        ({"address": "127.0.0.1", "port": 80, "labels": []}, "labels"),
        ({"address": "127.0.0.1", "port": 80, "ttl_seconds": -1}, "ttl_seconds"),
        ({"address": "127.0.0.1", "port": 80, "ttl_seconds": "10"}, "ttl_seconds"),
        ({"address": "127.0.0.1", "port": 80, "weight": 0}, "weight"),
        ({"address": "127.0.0.1", "port": 80, "locality": {"planet": "x"}}, "locality.planet"),
        ({"address": "127.0.0.1", "port": 80, "colour": "red"}, "colour"),
        ([1, 2], "body"),
        (b"{not json", "body"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(pilot, body, field):
    status, out = call(pilot, "put", INST, "/v1/services/s/instances/i", body)
    assert status == 400 and out["field"] == field, out
    assert out["error"].startswith(field + ":")


# Bodies drawn at random: the server accepts exactly what the spec's request schema accepts.
_REQ = ROOT["components"]["schemas"]["InstanceRegistration"]
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(-1, 90000, allow_nan=False),
    st.text(max_size=5),
    st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", "1.2.3", "tcp", "grpc"]),
)
_fields = {
    "address": st.one_of(
        st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", "999.1.1.1", "host", ""]), _value
    ),
    "port": st.one_of(st.integers(-1, 70000), _value),
    "protocol": st.one_of(st.sampled_from(["http", "grpc", "tcp", "dubbo", "smtp"]), _value),
    "labels": st.one_of(
        st.dictionaries(
            st.sampled_from(["app", "v", "k8s.io/x"]), st.one_of(st.text(max_size=3), st.integers())
        ),
        _value,
    ),
    "ttl_seconds": st.one_of(st.floats(-1, 90000, allow_nan=False), st.integers(-1, 90000), _value),
    "weight": st.one_of(st.integers(-1, 200), _value),
    "locality": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "region": st.text(max_size=3),
                "zone": st.one_of(st.text(max_size=3), st.integers()),
            },
        ),
        _value,
    ),
    "service_port": st.one_of(st.integers(0, 70000), _value),
    "healthy": st.one_of(st.booleans(), _value),
    "extra": _value,
}
_bodies = st.fixed_dictionaries({}, optional=_fields)


@pytest.fixture(scope="module")
def shared_pilot(tmp_path_factory):
    p = PilotProcess(tmp_path_factory.mktemp("pilot"))
    try:
        yield p.start()
    finally:
        p.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies)
def test_server_agrees_with_request_schema(shared_pilot, body):
    try:
        jsonschema.validate(body, schema_for(_REQ), format_checker=jsonschema.FormatChecker())
        valid = True
    except jsonschema.ValidationError:
        valid = False
    status, out = call(shared_pilot, "put", INST, "/v1/services/fuzz/instances/f1", body)
    assert status in ((200, 201) if valid else (400,)), (body, valid, status, out)
    if not valid:
        assert out["field"].split(".")[0] in set(body) | {"address", "port"}, (body, out)


def test_ttl_expiry_and_heartbeats(pilot):
    pilot.register("svc", "beating", address="127.0.0.1", port=1000, ttl_seconds=1)
    pilot.register("svc", "silent", address="127.0.0.1", port=1001, ttl_seconds=1)
    for _ in range(8):  # 2 s of heartbeats every 0.25 s
        assert http("PUT", pilot.api + "/v1/services/svc/instances/beating/heartbeat")[0] == 200
        time.sleep(0.25)
    _, out = http("GET", pilot.api + "/v1/services/svc")
    assert [i["instance_id"] for i in out["instances"]] == ["beating"]
    time.sleep(1.5)
    assert http("GET", pilot.api + "/v1/services/svc")[0] == 404
    _, metrics = http("GET", pilot.api + "/metrics")
    assert "pilot_xds_connections" in metrics or "pilot_rebuilds_total" in metrics


def test_restart_loses_no_registration(tmp_path):
    data = tmp_path / "data"
    p = PilotProcess(tmp_path / "a", data_dir=data)
    p.start()
    try:
        p.register(
            "durable", "d1", address="127.0.0.1", port=7001, ttl_seconds=30, labels={"v": "1"}
        )
        p.register("durable", "d2", address="127.0.0.1", port=7002)
        p.register("durable", "d3", address="127.0.0.1", port=7003)
        p.deregister("durable", "d3")
    finally:
        p.stop(sig=9)  # no clean shutdown: what was acknowledged must be on disk
    p2 = PilotProcess(tmp_path / "b", data_dir=data)
    p2.start()
    try:
        _, out = http("GET", p2.api + "/v1/services/durable")
        assert [(i["instance_id"], i["port"], i["labels"]) for i in out["instances"]] == [
            ("d1", 7001, {"v": "1"}),
            ("d2", 7002, {}),
        ]
        assert out["instances"][0]["expires_in"] > 25  # a fresh TTL after the restart
        # no service_port given: both instances back one service port (the lower of the tie)
        p2.wait_config("eds", lambda c: set(c) == {"outbound|7001||durable"})
    finally:
        p2.stop()


def _metric(pilot, name: str) -> float:
    _, text = http("GET", pilot.api + "/metrics")
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 32000 + b"]" * 32000,  # 64,000 bytes of nested arrays
        # labels nested 10,000 deep, about 60 KB
        b'{"address": "127.0.0.1", "port": 80, "labels": '
        + b'{"a":' * 10000
        + b'"x"'
        + b"}" * 10000
        + b"}",
    ],
    ids=["nested-arrays", "nested-labels"],
)
def test_deeply_nested_json_is_a_400_naming_the_body(pilot, raw):
    """Probed: the JSON parser's RecursionError became a 500 with a traceback in the log."""
    assert len(raw) <= 64 * 1024
    status, out = http("PUT", pilot.api + "/v1/services/deep/instances/d1", raw)
    assert status == 400, (status, out)
    assert out["field"] == "body" and "nested too deeply" in out["message"], out
    assert "RecursionError" not in pilot.log_text() and "Traceback" not in pilot.log_text()
    # the pilot still serves everyone else
    assert (
        http(
            "PUT",
            pilot.api + "/v1/services/deep/instances/d2",
            {"address": "127.0.0.1", "port": 80},
        )[0]
        == 201
    )


def test_clients_dropping_mid_body_are_not_store_errors(pilot):
    """Probed: each client that closed before sending its whole body was logged as a store
    error and counted in pilot_api_store_errors_total, although the store was healthy."""
    import socket

    host, port = "127.0.0.1", pilot.api_port
    dropped = 300
    for i in range(dropped):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(
                f"PUT /v1/services/drop/instances/i{i} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                '{"address": "127.0.0.1"'.encode()
            )
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 5
    while _metric(pilot, "pilot_api_client_disconnects_total") < dropped:
        assert time.monotonic() < deadline, pilot.log_text()
        time.sleep(0.05)
    assert _metric(pilot, "pilot_api_client_disconnects_total") == dropped
    assert _metric(pilot, "pilot_api_store_errors_total") == 0
    assert "store error" not in pilot.log_text()
    # nothing half-registered, and the store still takes registrations
    assert http("GET", pilot.api + "/v1/services/drop")[0] == 404
    assert (
        http(
            "PUT",
            pilot.api + "/v1/services/drop/instances/ok",
            {"address": "127.0.0.1", "port": 80},
        )[0]
        == 201
    )
