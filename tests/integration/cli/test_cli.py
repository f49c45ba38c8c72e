"""`sofamesh proxy` as pilot-agent starts it: Envoy's flags, exit codes and outputs."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import free_port, sofamesh_command
from tests.integration.admin.helpers import (
    get,
    post,
    start_sofamesh,
    stop,
    write_bootstrap,
)


def run(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        check=False,
        args=[*sofamesh_command(), "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_version_and_bad_flag():
    r = run("--version")
    assert r.returncode == 0
    assert "version: " in r.stdout and "/0.1.0/Clean/RELEASE/" in r.stdout
    r = run("--hot-restart-version")  # as Envoy: the version alone, no newline
    assert (r.returncode, r.stdout) == (0, "sofamesh.1"), r
    r = run("--no-such-flag")
    assert r.returncode == 1 and "PARSE ERROR" in r.stderr
    r = run("--concurrency", "two")
    assert r.returncode == 1 and "PARSE ERROR" in r.stderr
    r = run("--component-log-level", "upstream")
    assert r.returncode == 1 and "component log level not correctly specified" in r.stderr


def test_pilot_agent_command_line(tmp_path):
    """The flags Istio's pilot-agent passes, all accepted and reflected in /server_info."""
    admin = free_port()
    cfg = write_bootstrap(tmp_path / "envoy-rev.json.yaml", admin=admin, upstream=free_port())
    addr_file = tmp_path / "admin.addr"
    proc = start_sofamesh(
        cfg,
        admin,
        "--drain-time-s",
        "45",
        "--drain-strategy",
        "immediate",
        "--parent-shutdown-time-s",
        "60",
        "--local-address-ip-version",
        "v4",
        "--file-flush-interval-msec",
        "1000",
        "--file-flush-min-size-kb",
        "16",
        "--disable-hot-restart",
        "--allow-unknown-static-fields",
        "--skip-deprecated-logs",
        "--component-log-level",
        "misc:error,upstream:warning",
        "--log-format",
        "%v",
        "--concurrency",
        "1",
        "--service-node",
        "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
        "--service-cluster",
        "pod.ns",
        "--base-id",
        "1",
        "--restart-epoch",
        "0",
        "--enable-core-dump",
        "--config-yaml",
        "node: {metadata: {ISTIO_VERSION: '1.22'}}",
        "--admin-address-path",
        str(addr_file),
    )
    try:
        info = json.loads(get(admin, "/server_info")[1])
        o = info["command_line_options"]
        assert o["drain_time"] == "45s" and o["drain_strategy"] == "Immediate"
        assert o["parent_shutdown_time"] == "60s" and o["file_flush_interval"] == "1s"
        assert o["disable_hot_restart"] is True and o["allow_unknown_static_fields"] is True
        assert o["component_log_level"] == "misc:error,upstream:warning"
        assert o["base_id"] == "1" and o["enable_core_dump"] is True
        assert info["node"]["id"] == "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"
        assert info["node"]["cluster"] == "pod.ns"
        assert info["node"]["metadata"]["ISTIO_VERSION"] == "1.22"  # --config-yaml merged
        assert addr_file.read_text() == f"127.0.0.1:{admin}"
    finally:
        stop(proc)
    assert proc.returncode == 0  # SIGTERM is a clean exit, as in Envoy


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_listener_bind_failure_exits_1(tmp_path, concurrency):
    admin = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_bootstrap(tmp_path / "b.yaml", admin=admin, port=port, upstream=free_port())
        r = run("-c", str(cfg), "--concurrency", concurrency, timeout=60)
    assert r.returncode == 1
    assert "error initializing" in r.stderr


def test_init_only_and_validate_modes(tmp_path):
    admin = free_port()
    cfg = write_bootstrap(tmp_path / "b.yaml", admin=admin, upstream=free_port())
    r = run("-c", str(cfg), "--mode", "init_only", "--concurrency", "1")
    assert r.returncode == 0, r.stderr
    r = run("-c", str(cfg), "--mode", "validate")
    assert (r.returncode, r.stdout) == (0, f"configuration '{cfg}' OK\n")
    r = run("-c", str(tmp_path / "missing.yaml"), "--mode", "validate")
    assert r.returncode == 1
    assert f"Invalid path: {tmp_path / 'missing.yaml'}" in r.stderr


def _wait_for_text(path, text: str) -> None:
    """The access log line is written just after the reply is sent."""
    deadline = time.monotonic() + 5
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never reached {path}"
        time.sleep(0.02)


def test_log_format_and_admin_access_log(tmp_path):
    admin = free_port()
    cfg = write_bootstrap(tmp_path / "b.yaml", admin=admin, upstream=free_port())
    alog = tmp_path / "admin_access.log"
    overlay = (
        "admin: {access_log: [{name: envoy.access_loggers.file, typed_config: "
        "{'@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3."
        f"FileAccessLog, path: '{alog}'}}}}]}}"
    )
    proc = start_sofamesh(
        cfg, admin, "--concurrency", "1", "--config-yaml", overlay, "--log-format", "%L|%n|%v"
    )
    try:
        assert get(admin, "/ready?x=1") == (200, "LIVE\n")
        _wait_for_text(alog, "/ready?x=1")
        # logrotate: move the file away, then reopen (admin endpoint, then SIGUSR1)
        alog.rename(tmp_path / "admin_access.log.1")
        assert post(admin, "/reopen_logs") == (200, "OK\n")
        assert get(admin, "/ready?after=reopen") == (200, "LIVE\n")
        _wait_for_text(alog, "/ready?after=reopen")
        alog.rename(tmp_path / "admin_access.log.2")
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not alog.exists():
            assert time.monotonic() < deadline, "SIGUSR1 did not reopen the access log"
            time.sleep(0.05)
        assert get(admin, "/ready?after=usr1") == (200, "LIVE\n")
        _wait_for_text(alog, "/ready?after=usr1")
        alog.rename(tmp_path / "admin_access.log.3")  # the first line is checked below
        (tmp_path / "admin_access.log.1").rename(alog)
    finally:
        stop(proc)
    lines = alog.read_text().splitlines()
    line = [x for x in lines if "/ready?x=1" in x][-1]
    assert re.fullmatch(
        r'\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /ready\?x=1 HTTP/1.1" '
        r'200 - 0 5 \d+ - "-" "[^"]*" "-" "127\.0\.0\.1:\d+" "-"',
        line,
    ), line


def test_log_format_flag_shapes_log_lines(tmp_path):
    r = run("-c", str(tmp_path / "missing.yaml"), "--mode", "validate", "--log-format", "%L|%n|%v")
    assert r.returncode == 1
    assert f"C|main|error initializing configuration '{tmp_path / 'missing.yaml'}'" in r.stderr


def test_validate_runs_the_servers_own_check(tmp_path):
    cfg = write_bootstrap(tmp_path / "b.yaml", admin=free_port(), upstream=free_port())
    cmd = [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    # passes config validation, refused only by the Server's build (Server.check)
    refused = "route: {cluster: backend}\n"
    added = (
        '                request_headers_to_add: [{header: {key: x-t, value: "%START_TIME%"}}]\n'
    )
    text = cfg.read_text()
    assert refused in text
    cfg.write_text(text.replace(refused, refused + added))
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "request_headers_to_add: header value operator %START_TIME%" in bad.stderr, bad.stderr
