"""RouteConfiguration.max_direct_response_body_size_bytes (istiod sets 1 MiB on its route
configs): a direct response body over the limit, 4096 bytes when unset, is refused as
Envoy 1.40 refuses it (same reason); under it, the body is served as Envoy serves it."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.admin.helpers import request, start_envoy, start_sofamesh, stop
from tests.integration.istio.test_hcm_options import bootstrap

BODY = "x" * 5000


def with_body(admin: int, port: int, limit: int | None) -> dict:
    doc = bootstrap(admin, port, 1)
    rc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]
    rc["virtual_hosts"][0]["routes"] = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": BODY}},
        }
    ]
    if limit is not None:
        rc["max_direct_response_body_size_bytes"] = limit
    return doc


@pytest.mark.parametrize(("limit", "ok"), [(None, False), (4999, False), (1048576, True)])
def test_limit_as_envoy(tmp_path, limit, ok):
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps(with_body(free_port(), 0, limit)))
    for cmd in ([envoy_binary()], [*sofamesh_command(), "proxy"]):
        r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
            [*cmd, "--mode", "validate", "-c", str(cfg), "-l", "critical"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (r.returncode == 0) == ok, (cmd, r.stderr)
        if not ok:
            want = f"response body size is 5000 bytes; maximum is {limit or 4096}"
            assert want in r.stderr, (cmd, r.stderr)


def test_body_under_istios_limit_served_as_envoy(tmp_path):
    got = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, port = free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(with_body(admin, port, 1048576)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            status, headers, body = request(port, "GET", "/")
        finally:
            stop(proc)
        got[who] = (status, headers.get("content-length"), body)
    assert got["sofamesh"] == got["envoy"] == (200, "5000", BODY)
