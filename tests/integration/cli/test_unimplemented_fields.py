"""Issue 2: a config option sofamesh does not implement is a start-up error naming its field
path, never silently ignored. Each option below used to pass validation and then do nothing
(the Server never read it); now `--mode validate` exits 1 naming it and the proxy refuses to
start. `Server.check` (run by `--mode validate`) catches what only the Server's own build
refuses. A config using every implemented option still validates, starts and serves."""

from __future__ import annotations

import copy
import http.client
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sofamesh.proxy import cli
from sofamesh.proxy.server import Server
from tests.conftest import free_port, sofamesh_command
from tests.integration.admin.helpers import start_sofamesh, stop
from tests.support.http_upstream import RecordingUpstream

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
LRL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
L0 = "static_resources.listeners[0]"
HCM = f"{L0}.filter_chains[0].filters[0].typed_config"
R0 = f"{HCM}.route_config.virtual_hosts[0].routes[0]"
C0 = "static_resources.clusters[0]"


def _endpoint(port: int, **extra) -> dict:
    return {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
        **extra,
    }


def base(upstream: int = 1, admin: int = 0, port: int = 0) -> dict:
    """The smallest config sofamesh runs: one HCM listener, one STATIC cluster."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM_TYPE,
                                        "stat_prefix": "ingress",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "backend"},
                                                        }
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": [ROUTER],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [{"lb_endpoints": [_endpoint(upstream)]}],
                    },
                }
            ],
        },
    }


def _hcm(b: dict) -> dict:
    return b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _route(b: dict) -> dict:
    return _hcm(b)["route_config"]["virtual_hosts"][0]["routes"][0]


def _cluster(b: dict) -> dict:
    return b["static_resources"]["clusters"][0]


def _lrl(**extra) -> dict:
    return {"@type": LRL_TYPE, "stat_prefix": "rl", **extra}


# (id, mutation of the base config, field path the refusal must name). Before issue 2's
# allow-lists every one of these validated and the Server ran without acting on it.
IGNORED_BEFORE: list[tuple[str, Callable[[dict], None], str]] = [
    (
        "http_filter_disabled",
        lambda b: _hcm(b)["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": _lrl(),
                "disabled": True,
            },
        ),
        f"{HCM}.http_filters[0].disabled",
    ),
    (
        "retry_per_try_idle_timeout",
        lambda b: _route(b)["route"].update(
            retry_policy={"retry_on": "5xx", "per_try_idle_timeout": "1s"}
        ),
        f"{R0}.route.retry_policy.per_try_idle_timeout",
    ),
    (
        "virtual_host_retry_policy",
        lambda b: _hcm(b)["route_config"]["virtual_hosts"][0].update(
            retry_policy={"retry_on": "5xx"}
        ),
        f"{HCM}.route_config.virtual_hosts[0].retry_policy",
    ),
    (
        "cluster_common_lb_config",
        # healthy_panic_threshold, locality weighting and zone-aware routing are implemented
        lambda b: _cluster(b).update(
            common_lb_config={"close_connections_on_host_set_change": True}
        ),
        f"{C0}.common_lb_config.close_connections_on_host_set_change",
    ),
    (
        "endpoint_unhealthy",
        lambda b: _cluster(b)["load_assignment"]["endpoints"][0]["lb_endpoints"][0].update(
            health_status="UNHEALTHY"
        ),
        f"{C0}.load_assignment.endpoints[0].lb_endpoints[0].health_status",
    ),
    (
        "local_ratelimit_request_headers_when_not_enforced",
        lambda b: _hcm(b)["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": _lrl(
                    request_headers_to_add_when_not_enforced=[
                        {"header": {"key": "x-rl", "value": "1"}}
                    ]
                ),
            },
        ),
        f"{HCM}.http_filters[0].typed_config.request_headers_to_add_when_not_enforced",
    ),
]


def _write(tmp_path: Path, b: dict, name: str = "cfg.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(b))
    return p


def _validate(cfg: Path, capsys) -> tuple[int, str, str]:
    rc = cli.main(["--mode", "validate", "-c", str(cfg), "-l", "warning"])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("mutate", "path"),
    [(m, p) for _, m, p in IGNORED_BEFORE],
    ids=[i for i, _, _ in IGNORED_BEFORE],
)
def test_validate_refuses_option_it_would_ignore(mutate, path, tmp_path, capsys):
    b = base()
    rc, out, err = _validate(_write(tmp_path, b), capsys)
    assert rc == 0, err  # the base config is fine ...
    mutate(b)
    rc, out, err = _validate(_write(tmp_path, b), capsys)
    assert rc == 1  # ... the option alone makes it an error
    assert "OK" not in out
    assert f"{path}: " in err and "is not implemented by sofamesh" in err, err


def _run_refused(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "-c", str(cfg), "--concurrency", "1", "-l", "info"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", ["http_filter_disabled", "endpoint_unhealthy"])
def test_proxy_refuses_to_start(case, tmp_path):
    mutate, path = next((m, p) for i, m, p in IGNORED_BEFORE if i == case)
    b = base(admin=free_port())
    mutate(b)
    r = _run_refused(_write(tmp_path, b))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{path}: " in r.stderr and "not implemented by sofamesh" in r.stderr, r.stderr


# What only the Server's build refuses (no validation rule): a header value operator the
# route compiler does not evaluate.
def _start_time_header(b: dict) -> None:
    _route(b)["request_headers_to_add"] = [{"header": {"key": "x-t", "value": "%START_TIME%"}}]


def test_validate_runs_the_server_check(tmp_path, capsys):
    b = base()
    _start_time_header(b)
    with pytest.raises(ValueError, match=r"request_headers_to_add: header value operator"):
        Server.check(cli_bootstrap(_write(tmp_path, b)), None)
    rc, out, err = _validate(_write(tmp_path, b), capsys)
    assert rc == 1
    assert "OK" not in out
    assert f"{R0}.request_headers_to_add: header value operator %START_TIME%" in err, err
    # the running proxy refuses it the same way
    b["admin"]["address"]["socket_address"]["port_value"] = free_port()
    r = _run_refused(_write(tmp_path, b, "serve.json"))
    assert r.returncode != 0
    assert "%START_TIME%" in r.stderr + r.stdout


def cli_bootstrap(cfg: Path):
    from sofamesh.config import load_bootstrap

    return load_bootstrap(str(cfg), validate=False)


# ---------------------------------------------------------------------------------------
# Everything implemented, at once: validates, passes Server.check, starts and serves.
# ---------------------------------------------------------------------------------------


def full(ports: dict[str, int], admin: int, log: Path) -> dict:
    b = base(ports["a"], admin)
    lst = b["static_resources"]["listeners"][0]
    lst.update(
        stat_prefix="full",
        per_connection_buffer_limit_bytes=65536,
        traffic_direction="INBOUND",
        bind_to_port=True,
        metadata={"filter_metadata": {"ops": {"team": "mesh"}}},
    )
    lst["filter_chains"][0].update(name="main", metadata={"filter_metadata": {"x": {"y": 1}}})
    hcm = _hcm(b)
    hcm.update(
        codec_type="HTTP1",
        use_remote_address=True,
        skip_xff_append=False,
        generate_request_id=True,
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        via="sofa-full",
        server_name="sofa-full",
        server_header_transformation="OVERWRITE",
        max_request_headers_kb=32,
        common_http_protocol_options={"idle_timeout": "30s", "max_headers_count": 50},
        http_protocol_options={"accept_http_10": True},
        upgrade_configs=[{"upgrade_type": "websocket", "enabled": True}],
        normalize_path=True,
        merge_slashes=True,
        strip_any_host_port=True,
        access_log=[
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers"
                    ".file.v3.FileAccessLog",
                    "path": str(log),
                },
            }
        ],
        http_filters=[
            {
                "name": "envoy.filters.http.local_ratelimit",
                "is_optional": False,
                "typed_config": _lrl(
                    status={"code": "TooManyRequests"},
                    token_bucket={
                        "max_tokens": 1000,
                        "tokens_per_fill": 1000,
                        "fill_interval": "1s",
                    },
                    filter_enabled={"default_value": {"numerator": 100}, "runtime_key": "e"},
                    filter_enforced={"default_value": {"numerator": 100}, "runtime_key": "f"},
                    response_headers_to_add=[{"header": {"key": "x-rl", "value": "checked"}}],
                ),
            },
            ROUTER,
        ],
    )
    rc = hcm["route_config"]
    rc.update(
        validate_clusters=True,
        metadata={"filter_metadata": {"rc": {"v": 1}}},
        request_headers_to_add=[{"header": {"key": "x-rc", "value": "rc"}}],
        response_headers_to_add=[{"header": {"key": "x-rc-resp", "value": "rc"}}],
        request_headers_to_remove=["x-drop-rc"],
        response_headers_to_remove=["x-upstream-drop"],
    )
    vh = rc["virtual_hosts"][0]
    vh.update(
        metadata={"filter_metadata": {"vh": {"v": 1}}},
        request_headers_to_add=[{"header": {"key": "x-vh", "value": "vh"}, "append": False}],
        request_headers_to_remove=["x-drop-vh"],
        response_headers_to_add=[{"header": {"key": "x-vh-resp", "value": "vh"}}],
        response_headers_to_remove=["x-upstream-drop2"],
        typed_per_filter_config={
            "envoy.filters.http.local_ratelimit": _lrl(
                token_bucket={"max_tokens": 1000, "fill_interval": "1s"}
            )
        },
    )
    vh["routes"] = [
        {
            "name": "rewrite",
            "match": {
                "prefix": "/old/",
                "case_sensitive": False,
                "headers": [{"name": "x-go", "exact_match": "1"}],
                "query_parameters": [{"name": "q", "present_match": True}],
            },
            "decorator": {"operation": "rewrite"},
            "metadata": {"filter_metadata": {"r": {}}},
            "request_headers_to_add": [
                {
                    "header": {
                        "key": "x-peer",
                        "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "request_headers_to_remove": ["x-drop-route"],
            "response_headers_to_add": [{"header": {"key": "x-route", "value": "rewrite"}}],
            "response_headers_to_remove": ["x-upstream-drop3"],
            "route": {
                "cluster": "backend",
                "prefix_rewrite": "/new/",
                "host_rewrite_literal": "rewritten.test",
                "timeout": "5s",
                "retry_policy": {
                    "retry_on": "5xx,connect-failure",
                    "num_retries": 2,
                    "per_try_timeout": "2s",
                    "retriable_status_codes": [503],
                    "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.05s"},
                },
                "upgrade_configs": [{"upgrade_type": "websocket", "enabled": True}],
            },
        },
        {
            "match": {"safe_regex": {"regex": "/rx/[0-9]+"}},
            "route": {
                "cluster": "backend",
                "regex_rewrite": {
                    "pattern": {"regex": "^/rx/([0-9]+)$"},
                    "substitution": "/num/\\1",
                },
            },
        },
        {
            "match": {"path": "/weighted"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": "backend", "weight": 0}, {"name": "least", "weight": 10}]
                },
                "auto_host_rewrite": False,
            },
        },
        {"match": {"path_separated_prefix": "/dns"}, "route": {"cluster": "dns"}},
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 418, "body": {"inline_string": "teapot"}},
        },
        {
            "match": {"prefix": "/redirect/"},
            "redirect": {
                "https_redirect": True,
                "host_redirect": "secure.test",
                "port_redirect": 8443,
                "prefix_rewrite": "/r/",
                "response_code": "TEMPORARY_REDIRECT",
                "strip_query": True,
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    backend = _cluster(b)
    backend.update(
        lb_policy="ROUND_ROBIN",
        per_connection_buffer_limit_bytes=65536,
        max_requests_per_connection=100,
        metadata={"filter_metadata": {"c": {}}},
        circuit_breakers={
            "thresholds": [
                {
                    "max_connections": 100,
                    "max_pending_requests": 100,
                    "max_requests": 100,
                    "max_retries": 3,
                },
                {"priority": "HIGH", "max_requests": 10},
            ]
        },
    )
    backend["load_assignment"]["endpoints"] = [
        {
            "locality": {"zone": "z1"},
            "load_balancing_weight": 1,
            "lb_endpoints": [
                _endpoint(
                    ports["a"],
                    health_status="HEALTHY",
                    load_balancing_weight=2,
                    metadata={"filter_metadata": {}},
                )
            ],
        }
    ]
    least = copy.deepcopy(backend)
    least.update(
        name="least", lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 3}
    )
    least.pop("circuit_breakers")
    least["load_assignment"] = {
        "cluster_name": "least",
        "endpoints": [{"lb_endpoints": [_endpoint(ports["b"])]}],
    }
    dns = {
        "name": "dns",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": "60s",
        "wait_for_warm_on_init": True,
        "load_assignment": {
            "cluster_name": "dns",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "localhost",
                                        "port_value": ports["a"],
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    b["static_resources"]["clusters"] += [least, dns]
    return b


def _get(port: int, target: str, headers: dict | None = None) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", target, headers=headers or {})
    r = c.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    c.close()
    return r


def test_every_implemented_option_starts_and_serves(tmp_path, capsys):
    with RecordingUpstream(["a", "b"]) as up:
        admin = free_port()
        cfg = _write(tmp_path, full(up.ports, admin, tmp_path / "access.log"))
        rc, out, err = _validate(cfg, capsys)
        assert rc == 0, err
        assert "OK" in out
        Server.check(cli_bootstrap(cfg), None)
        proc = start_sofamesh(cfg, admin, "--concurrency", "1")
        try:
            from tests.integration.admin.helpers import get

            port = int(get(admin, "/listeners")[1].strip().rsplit(":", 1)[1])
            r = _get(port, "/OLD/x?q=1", {"x-go": "1", "x-drop-route": "1", "x-drop-vh": "1"})
            assert r.status == 200, r.body
            rec = up.wait_records(1)[-1]
            assert rec.target == "/new/x?q=1"
            assert rec.header("host") == ["rewritten.test"]
            assert rec.header("x-peer") == ["127.0.0.1"]
            assert rec.header("x-vh") == ["vh"] and rec.header("x-rc") == ["rc"]
            assert rec.header("x-drop-route") == [] and rec.header("x-drop-vh") == []
            assert rec.header("via") == ["sofa-full"]
            assert r.getheader("x-route") == "rewrite" and r.getheader("x-vh-resp") == "vh"
            assert r.getheader("x-rc-resp") == "rc" and r.getheader("x-rl") is None
            assert r.getheader("server") == "sofa-full"
            assert r.getheader("x-request-id")
            up.clear()
            assert _get(port, "/rx/42").status == 200
            assert up.wait_records(1)[-1].target == "/num/42"
            up.clear()
            assert _get(port, "/weighted").status == 200
            assert up.wait_records(1)[-1].listener == "b"
            up.clear()
            assert _get(port, "/dns/x").status == 200
            assert up.wait_records(1)[-1].listener == "a"
            r = _get(port, "/direct")
            assert (r.status, r.body) == (418, b"teapot")
            r = _get(port, "/redirect/p?z=1")
            assert r.status == 307
            assert r.getheader("location") == "https://secure.test:8443/r/p"
        finally:
            stop(proc)
