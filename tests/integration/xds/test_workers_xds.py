"""`sofamesh proxy --concurrency 2` fed by `sofamesh pilot`: one ADS stream for the sidecar
(in its main process), both workers apply every update and serve it, a restarted worker
gets the current config before it serves, and an update a worker rejects is NACKed."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time

import pytest

from tests.conftest import free_port, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.integration.pilot.conftest import http as api
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


def who(port: int, host: str = "reviews") -> str | None:
    """One request on a new connection (so SO_REUSEPORT spreads them over the workers)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"host": host})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        c.close()
    if r.status != 200:
        return f"status {r.status}"
    m = re.match(r"upstream=(\S+)", body)
    return m.group(1) if m else body


def stats(admin: int) -> dict[str, int]:
    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def worker_cx(admin: int, port: int) -> dict[int, int]:
    """listener.127.0.0.1_<port>.worker_<i>.downstream_cx_total, by worker."""
    pat = re.compile(rf"^listener\.127\.0\.0\.1_{port}\.worker_(\d+)\.downstream_cx_total$")
    return {int(m.group(1)): v for k, v in stats(admin).items() if (m := pat.match(k))}


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_two_workers_one_stream(pilot, tmp_path, mode):
    up = RecordingUpstream(["alpha", "beta"]).start()
    admin = free_port()
    boot = ads_bootstrap(pilot.xds_port, admin, mode == "delta")
    side = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / "side", concurrency=2)
    out = pilot.outbound_port
    try:
        side.start()
        pilot.register(
            "reviews", "r-alpha", address="127.0.0.1", port=up.ports["alpha"], service_port=9080
        )
        wait_until(lambda: who(out) == "alpha", 10, "reviews -> alpha")
        # every new connection is served, whichever worker the kernel hands it to
        assert [who(out) for _ in range(60)] == ["alpha"] * 60
        per_worker = worker_cx(admin, out)
        assert sorted(per_worker) == [0, 1] and all(v > 0 for v in per_worker.values()), per_worker

        pilot.register(
            "reviews", "r-beta", address="127.0.0.1", port=up.ports["beta"], service_port=9080
        )
        wait_until(lambda: {who(out) for _ in range(30)} == {"alpha", "beta"}, 5, "both")
        t0 = time.monotonic()
        pilot.deregister("reviews", "r-beta")
        wait_until(lambda: all(who(out) == "alpha" for _ in range(40)), 2.0, "beta gone")
        assert time.monotonic() - t0 < 2.0

        # one xDS stream for the sidecar, not one per worker, and it is in sync
        _, conns = api("GET", pilot.api + "/debug/connections")
        mine = [c for c in conns["connections"] if c["node"].startswith("sidecar~127.0.0.1~")]
        assert len(mine) == 1, conns
        assert {k: t["status"] for k, t in mine[0]["types"].items()} == dict.fromkeys(
            ("cds", "eds", "lds", "srds", "rds"), "SYNCED"
        )
        s = stats(admin)
        assert s["control_plane.connected_state"] == 1
        assert s["cluster_manager.cds.update_rejected"] == 0
        assert s["listener_manager.lds.update_rejected"] == 0
        # applied by two workers, counted once (as Envoy's main thread counts it)
        assert s["listener_manager.listener_added"] == 1, s["listener_manager.listener_added"]
        # admin's config_dump shows the dynamic resources with the pilot's versions
        _, dump = admin_get(admin, "/config_dump")
        by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(dump)["configs"]}
        active = by_type["ClustersConfigDump"]["dynamic_active_clusters"]
        assert [c["cluster"]["name"] for c in active] == ["outbound|9080||reviews"]
        assert by_type["ListenersConfigDump"]["dynamic_listeners"][0]["active_state"]

        # a worker killed and restarted serves the current config from its first connection
        kids = children(side.pid)
        assert len(kids) == 2, kids
        os.kill(kids[0], signal.SIGKILL)
        wait_until(lambda: stats(admin).get("server.worker_deaths") == 1, 10, "worker death")
        wait_until(
            lambda: len([k for k in children(side.pid) if k not in kids]) == 1, 15, "restart"
        )
        wait_until(lambda: stats(admin).get("listener_manager.workers_started") == 2, 15, "2 up")
        assert [who(out) for _ in range(60)] == ["alpha"] * 60
        per_worker = worker_cx(admin, out)
        assert all(v > 0 for v in per_worker.values()) and len(per_worker) == 2, per_worker

        # the restarted worker takes later updates too
        pilot.register(
            "reviews", "r-beta2", address="127.0.0.1", port=up.ports["beta"], service_port=9080
        )
        wait_until(lambda: {who(out) for _ in range(30)} == {"alpha", "beta"}, 5, "beta back")
        pilot.deregister("reviews", "r-alpha")
        wait_until(lambda: all(who(out) == "beta" for _ in range(40)), 2.0, "alpha gone")
        pilot.deregister("reviews", "r-beta2")
        wait_until(lambda: who(out) == "status 404", 2.0, "the route gone")
    finally:
        side.stop()
        up.stop()
