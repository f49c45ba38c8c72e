"""SOFARegistry: the real sofa-registry-node SDK against the emulated session server
(tests/support/sofa_session_server.py), then `sofamesh pilot` reading it.

The SDK registering, subscribing and receiving pushes through the emulator is what shows the
emulator speaks the session server's protocol (the SDK decodes our ReceivedData with its own
Hessian decoder, and we decode its registers). The pilot then subscribes the same way.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.integration.pilot.conftest import NODE_ID, PilotProcess, http

ROOT = Path(__file__).resolve().parents[3]
PEERS = ROOT / "tests" / "peers"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class SessionServer:
    """The emulator as its own process, as `python -m tests.support.sofa_session_server`."""

    def __init__(self, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.sofa_session_server", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.match(r"sofa-session-server ready 127\.0\.0\.1:(\d+)", line)
        assert m, f"emulator did not start: {line!r}"
        self.port = int(m.group(1))
        self.address = f"127.0.0.1:{self.port}"

    def data_info_ids(self) -> list[str]:
        status, out = http("GET", f"http://{self.address}/digest/getDataInfoIdList")
        assert status == 200, out
        assert isinstance(out, list)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class NodeClient:
    """tests/peers/registry_client.js: the real SDK, one JSON command/event per line."""

    def __init__(self, server: SessionServer, zone: str = "ZONE_A") -> None:
        self.proc = subprocess.Popen(
            ["node", "registry_client.js", "--endpoint", "127.0.0.1", "--port", str(server.port)]
            + ["--zone", zone],
            cwd=PEERS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda e: e["event"] == "ready", "ready", timeout=20)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.events.put(json.loads(line))

    def send(self, op: str, **kw) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        self.wait(lambda e: e["event"] == "ok" and e["op"] == op, op)

    def wait(self, pred, what: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node client: no {what} in {timeout}s")
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if e["event"] == "error":
                raise AssertionError(f"node client error: {e['message']}")
            if pred(e):
                return e

    def wait_data(self, data_id: str, want: dict[str, list[str]], timeout: float = 10.0) -> None:
        def match(e: dict) -> bool:
            if e["event"] != "data" or e["dataId"] != data_id:
                return False
            got = {z: sorted(v) for z, v in e["zoneData"].items() if v}
            return got == {z: sorted(v) for z, v in want.items()}

        self.wait(match, f"data {want} for {data_id}", timeout)

    def crash(self) -> None:
        """Exit at once: the emulator sees the socket close, as with a killed process."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "crash"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def session():
    s = SessionServer()
    yield s
    s.stop()


@pytest.fixture
def clients():
    made: list[NodeClient] = []

    def make(server: SessionServer, zone: str = "ZONE_A") -> NodeClient:
        c = NodeClient(server, zone)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


PROVIDER = (
    "bolt://127.0.0.1:{port}?startTime=1700000000000&pid=42&appName=echo&timeout=3000"
    "&serialization=hessian2&weight=100&protocol=bolt&interface=com.example.Echo&version=1.0"
)


def test_real_sdk_registers_subscribes_and_gets_pushes(session, clients):
    did = "com.example.Echo:1.0"
    sub = clients(session)
    sub.send("subscribe", dataId=did)
    pub1 = clients(session, "ZONE_A")
    a = PROVIDER.format(port=12200)
    pub1.send("publish", dataId=did, data=[a])
    sub.wait_data(did, {"ZONE_A": [a]})
    assert f"{did}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP" in session.data_info_ids()

    # a second publisher, in another zone
    pub2 = clients(session, "ZONE_B")
    pub2.send("publish", dataId=did, data=["127.0.0.1:12201"])
    sub.wait_data(did, {"ZONE_A": [a], "ZONE_B": ["127.0.0.1:12201"]})

    # republishing replaces the publisher's data
    pub1.send("publish", dataId=did, data=[a, "127.0.0.1:12202"])
    sub.wait_data(did, {"ZONE_A": [a, "127.0.0.1:12202"], "ZONE_B": ["127.0.0.1:12201"]})

    # unregister, then a publisher's process exits: both leave the subscriber's data
    pub1.send("unregister", dataId=did)
    sub.wait_data(did, {"ZONE_B": ["127.0.0.1:12201"]})
    pub2.crash()
    sub.wait_data(did, {})

    # groups are separate data: a subscriber of group SOFA sees only that group's publisher
    sub.send("subscribe", dataId=did, group="SOFA")
    pub3 = clients(session)
    pub3.send("publish", dataId=did, group="SOFA", data=["127.0.0.1:12203"])
    sub.wait_data(did, {"ZONE_A": ["127.0.0.1:12203"]})
    assert f"{did}#@#DEFAULT_INSTANCE_ID#@#SOFA" in session.data_info_ids()


def eds_endpoints(pilot: PilotProcess, cluster: str) -> list[tuple[str, int]]:
    """The EDS endpoints the pilot serves a sidecar for `cluster` (one SotW request)."""
    with grpc.insecure_channel(f"127.0.0.1:{pilot.xds_port}") as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        req = discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=[cluster])
        req.node.id = NODE_ID
        call = stub.StreamAggregatedResources(iter([req]), timeout=5)
        try:
            # None: the stream ended without an answer (the pilot had no such cluster at
            # that moment, e.g. while its registry reconnects); callers ask again
            resp = next(call, None)
        finally:
            call.cancel()
    if resp is None:
        return []
    out = []
    for res in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(res.value)
        if cla.cluster_name != cluster:
            continue
        for group in cla.endpoints:
            for lb in group.lb_endpoints:
                sa = lb.endpoint.address.socket_address
                out.append((sa.address, sa.port_value))
    return sorted(out)


def services(pilot: PilotProcess) -> dict[str, list[str]]:
    status, out = http("GET", pilot.api + "/v1/services")
    assert status == 200, out
    return {s["name"]: s["registries"] for s in out["services"]}


def instances(pilot: PilotProcess, name: str) -> list[tuple[str, int]]:
    """The service's endpoints as a sidecar gets them: its cluster from CDS, then EDS."""
    clusters = [
        c for c in pilot.config("cds") if c.startswith("outbound|") and c.endswith(f"||{name}")
    ]
    if not clusters:
        return []
    assert len(clusters) == 1, clusters
    return eds_endpoints(pilot, clusters[0])


def metric(pilot: PilotProcess, stat: str) -> float:
    status, text = http("GET", pilot.api + "/metrics")
    assert status == 200
    m = re.search(rf'pilot_registry_stat{{registry="sofaregistry",stat="{stat}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def eventually(pred, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)


def test_pilot_reads_sofaregistry(session, clients, tmp_path):
    d1, d2 = "com.example.Echo:1.0", "com.example.Found:1.0"
    n1, n2 = "com.example.Echo-1.0", "com.example.Found-1.0"  # as host names
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "registries": [
                    {
                        "type": "sofaregistry",
                        "address": session.address,
                        "http_address": session.address,
                        "data_ids": [d1],
                        "discover": True,
                        "discover_interval": 0.2,
                        "reconnect_max": 0.5,
                    }
                ]
            }
        )
    )
    pilot = PilotProcess(tmp_path, extra=["--config", str(cfg)])
    pilot.start()
    try:
        pub = clients(session)
        pub.send("publish", dataId=d1, data=[PROVIDER.format(port=12200)])
        pub.send("publish", dataId=d2, data=["127.0.0.1:12300"])  # found by the digest API
        eventually(
            lambda: services(pilot) == {n1: ["sofaregistry"], n2: ["sofaregistry"]},
            "both dataIds in /v1/services",
        )
        c1 = f"outbound|12200||{n1}"
        pilot.wait_config("cds", lambda c: c1 in c and f"outbound|12300||{n2}" in c)
        eventually(lambda: eds_endpoints(pilot, c1) == [("127.0.0.1", 12200)], "EDS for d1")

        # bad data from a second publisher: counted, its good datum and the rest kept
        pub2 = clients(session, "ZONE_B")
        pub2.send("publish", dataId=d1, data=["not-an-address", "127.0.0.1:12201"])
        eventually(
            lambda: instances(pilot, n1) == [("127.0.0.1", 12200), ("127.0.0.1", 12201)],
            "the second publisher's good datum",
        )
        assert metric(pilot, "parse_errors") == 1

        # the first publisher's process exits: its data goes from the model and from EDS
        pub.crash()
        eventually(lambda: n2 not in services(pilot), "d2 gone")
        eventually(lambda: instances(pilot, n1) == [("127.0.0.1", 12201)], "only 12201")
        pub2.send("unregister", dataId=d1)
        eventually(lambda: services(pilot) == {}, "everything gone")
        pilot.wait_config("cds", lambda c: c1 not in c)

        # the session server goes away: the pilot keeps its last snapshot, then redials
        pub3 = clients(session)
        pub3.send("publish", dataId=d1, data=["127.0.0.1:12210"])
        eventually(lambda: instances(pilot, n1) == [("127.0.0.1", 12210)], "12210")
        port = session.port
        session.stop()
        pub3.stop()  # or its SDK would republish 12210 into the next server
        time.sleep(1.0)
        assert instances(pilot, n1) == [("127.0.0.1", 12210)], "snapshot lost on disconnect"
        again = SessionServer(port)
        try:
            pub4 = clients(again)
            pub4.send("publish", dataId=d1, data=["127.0.0.1:12220"])
            eventually(
                lambda: instances(pilot, n1) == [("127.0.0.1", 12220)],
                "resubscribed after the server came back",
                timeout=10,
            )
            assert metric(pilot, "disconnects") >= 1
        finally:
            again.stop()
    finally:
        pilot.stop()
    assert pilot.proc is None
    # nothing of the adapter's reached the event loop's exception handler (the xDS server's
    # own log about this test's abrupt EDS stream cancels is not the adapter's business)
    log = pilot.log_text()
    assert "registries/sofa" not in log and "Exception in callback" not in log, log


def test_pilot_publishes_the_mesh_into_sofaregistry(session, clients, tmp_path):
    """`export: true`: services registered through the pilot's REST API are published into
    SOFARegistry, where the real SDK's subscriber gets them; the pilot subscribes to the same
    dataId and does not read its own publication back; a restarted session server gets
    everything published again."""
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "registries": [
                    {
                        "type": "sofaregistry",
                        "address": session.address,
                        "data_ids": ["orders"],
                        "export": True,
                        "reconnect_max": 0.5,
                    }
                ]
            }
        )
    )
    pilot = PilotProcess(tmp_path, extra=["--config", str(cfg)])
    pilot.start()
    datum = (
        "bolt://10.1.0.{n}:12200?protocol=bolt&sofamesh.export=sofaregistry&version=v1&weight={w}"
    )
    try:
        sub = clients(session)
        sub.send("subscribe", dataId="orders")
        pilot.register("orders", "o1", address="10.1.0.5", port=12200, protocol="bolt",
                       labels={"version": "v1"})  # fmt: skip
        sub.wait_data("orders", {"DEFAULT_ZONE": [datum.format(n=5, w=1)]})
        pilot.register("orders", "o2", address="10.1.0.6", port=12200, protocol="bolt",
                       labels={"version": "v1"}, weight=3)  # fmt: skip
        both = [datum.format(n=5, w=1), datum.format(n=6, w=3)]
        sub.wait_data("orders", {"DEFAULT_ZONE": both})
        # the pilot reads "orders" from SOFARegistry too, and skips its own publication
        time.sleep(0.5)
        assert services(pilot) == {"orders": ["api"]}
        # the session server restarts: the pilot publishes everything again
        port = session.port
        session.stop()
        again = SessionServer(port)
        try:
            sub2 = clients(again)
            sub2.send("subscribe", dataId="orders")
            sub2.wait_data("orders", {"DEFAULT_ZONE": both}, timeout=15)
            pilot.deregister("orders", "o1")
            pilot.deregister("orders", "o2")
            sub2.wait_data("orders", {})
            assert metric(pilot, "exports_removed") >= 1
        finally:
            again.stop()
    finally:
        pilot.stop()
