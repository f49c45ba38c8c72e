"""`sofamesh register` keeps an instance alive with heartbeats and deregisters it on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.conftest import sofamesh_command
from tests.integration.pilot.conftest import http


def instances(pilot, service):
    status, out = http("GET", f"{pilot.api}/v1/services/{service}")
    return [] if status == 404 else out["instances"]


def test_register_heartbeats_and_deregisters_on_exit(pilot, tmp_path):
    proc = subprocess.Popen(
        [
            *sofamesh_command(),
            "register",
            "--pilot",
            pilot.api,
            "--service",
            "billing",
            "--id",
            "b-1",
            "--address",
            "127.0.0.1",
            "--port",
            "9555",
            "--label",
            "version=v2",
            "--ttl",
            "1",
            "--weight",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not instances(pilot, "billing"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.poll() is not None else "slow"
            )
            time.sleep(0.05)
        (inst,) = instances(pilot, "billing")
        assert inst["labels"] == {"version": "v2"} and inst["weight"] == 4 and inst["port"] == 9555
        time.sleep(2.5)  # well past the 1 s TTL: heartbeats keep it
        assert [i["instance_id"] for i in instances(pilot, "billing")] == ["b-1"]
        # the pilot forgets it (as after an expiry): the next heartbeat's 404 re-registers
        pilot.deregister("billing", "b-1")
        deadline = time.monotonic() + 3
        while not instances(pilot, "billing"):
            assert time.monotonic() < deadline, "not re-registered"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert instances(pilot, "billing") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_register_rejects_bad_body_with_the_field(pilot):
    r = subprocess.run(
        [
            *sofamesh_command(),
            "register",
            "--pilot",
            pilot.api,
            "--service",
            "x",
            "--id",
            "1",
            "--address",
            "nope",
            "--port",
            "80",
            "--once",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode != 0 and "address" in (r.stderr + r.stdout)


def test_register_falls_over_to_the_next_pilot(pilot):
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run(
        [
            *sofamesh_command(),
            "register",
            "--pilot",
            f"{dead},{pilot.api}",
            "--service",
            "ha",
            "--id",
            "1",
            "--address",
            "127.0.0.1",
            "--port",
            "81",
            "--once",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert f"via {pilot.api}" in r.stdout
    assert [i["instance_id"] for i in instances(pilot, "ha")] == ["1"]
