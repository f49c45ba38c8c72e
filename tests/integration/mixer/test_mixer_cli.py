"""`sofamesh mixer` as a command: healthz, a busy port refused (no SO_REUSEPORT sharing),
a bad policy file refused with the entry's path."""

from __future__ import annotations

import socket
import subprocess

from tests.conftest import sofamesh_command
from tests.integration.mixer.conftest import MixerProcess


def test_healthz_and_metrics(tmp_path):
    m = MixerProcess(tmp_path).start()
    try:
        assert m.get("/healthz") == (200, "ok\n")
        status, text = m.get("/metrics")
        assert status == 200
        assert "sofamesh_mixer_access_log_entries_total 0" in text
    finally:
        m.stop()
    assert m.proc is not None and m.proc.returncode == 0  # SIGTERM: a clean exit


def test_busy_grpc_port_is_refused(tmp_path):
    first = MixerProcess(tmp_path).start()
    try:
        r = subprocess.run(
            [
                *sofamesh_command(),
                "mixer",
                "--grpc-address",
                f"127.0.0.1:{first.grpc_port}",
                "--http-address",
                "127.0.0.1:0",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert r.returncode == 1, r
        assert f"--grpc-address 127.0.0.1:{first.grpc_port}" in r.stderr
    finally:
        first.stop()


def test_busy_http_port_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                *sofamesh_command(),
                "mixer",
                "--grpc-address",
                "127.0.0.1:0",
                "--http-address",
                f"127.0.0.1:{port}",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert r.returncode == 1 and "--http-address" in r.stderr, r


def test_bad_policy_names_the_entry(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("quotas:\n  - bucket: {name: x}\n    requests_per_second: -1\n")
    r = subprocess.run(
        [*sofamesh_command(), "mixer", "--config", str(bad), "--grpc-address", "127.0.0.1:0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert "quotas[0].requests_per_second: expected a positive number" in r.stderr
