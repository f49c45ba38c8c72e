"""Two pilot replicas on one real etcd share the registry and serve the same xDS."""

from __future__ import annotations

import time

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sofamesh.pilot.generate import CDS, EDS
from tests.integration.pilot.conftest import PilotProcess, http
from tests.support.servers import EtcdServer


@pytest.fixture(scope="module")
def etcd():
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fetch(xds_port: int, type_url: str, names=()) -> discovery_pb2.DiscoveryResponse:
    """One SotW request/response with a plain gRPC client."""
    with grpc.insecure_channel(f"127.0.0.1:{xds_port}") as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
        req.node.id = "sidecar~127.0.0.1~cmp.ns~ns.svc.cluster.local"
        call = stub.StreamAggregatedResources(iter([req]), timeout=5)
        try:
            return next(call)
        finally:
            call.cancel()


def fetch_delta(xds_port: int, type_url: str, initial: dict | None = None):
    """One Delta request (wildcard) and its first response."""
    with grpc.insecure_channel(f"127.0.0.1:{xds_port}") as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
        req.node.id = "sidecar~127.0.0.1~cmp.ns~ns.svc.cluster.local"
        for k, v in (initial or {}).items():
            req.initial_resource_versions[k] = v
        call = stub.DeltaAggregatedResources(iter([req]), timeout=5)
        try:
            return next(call)
        finally:
            call.cancel()


def test_replicas_share_registrations_and_serve_identical_xds(etcd, tmp_path):
    store = f"etcd://{etcd.endpoint}/sofamesh-test-{time.monotonic_ns()}"
    a = PilotProcess(tmp_path / "a", store=store)
    b = PilotProcess(tmp_path / "b", store=store)
    a.start()
    try:
        b.start()
        try:
            a.register(
                "shop", "s1", address="127.0.0.1", port=8001, service_port=80, ttl_seconds=30
            )
            a.register("shop", "s2", address="127.0.0.1", port=8002, service_port=80, weight=2)
            b.register("cart", "c1", address="127.0.0.1", port=8101, ttl_seconds=2)
            want = {"outbound|80||shop", "outbound|8101||cart"}
            for p in (a, b):
                p.wait_config("cds", lambda c: set(c) == want)
            # same resources under the same versions, byte for byte, from both replicas
            for t, names in ((CDS, ()), (EDS, sorted(want))):
                ra, rb = fetch(a.xds_port, t, names), fetch(b.xds_port, t, names)
                assert ra.version_info == rb.version_info
                assert sorted(x.SerializeToString() for x in ra.resources) == sorted(
                    x.SerializeToString() for x in rb.resources
                )
                assert len(ra.resources) == len(want)
            # a Delta client moving from one replica to the other has nothing resent: the
            # per-resource versions are content hashes, identical on both
            first = fetch_delta(a.xds_port, CDS)
            held = {r.name: r.version for r in first.resources}
            assert set(held) == want
            again = fetch_delta(b.xds_port, CDS, held)
            assert not again.resources and not again.removed_resources
            assert again.system_version_info == first.system_version_info
            # heartbeats through the other replica keep cart (registered on b) alive past its TTL
            for _ in range(6):
                assert http("PUT", a.api + "/v1/services/cart/instances/c1/heartbeat")[0] == 200
                time.sleep(0.5)
            assert "outbound|8101||cart" in b.config("cds")
            # a deregistration on b reaches a (through etcd's watch: a moment later; before
            # it, both replicas still serve s2 and their EDS would compare equal)
            b.deregister("shop", "s2")
            deadline = time.monotonic() + 10
            while True:
                _, out = http("GET", a.api + "/v1/services/shop")
                ids = [i["instance_id"] for i in out["instances"]]
                if ids == ["s1"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert ids == ["s1"]
            a.wait_config(
                "eds",
                lambda c: c.get("outbound|80||shop") == b.config("eds").get("outbound|80||shop"),
            )
            # without heartbeats the etcd lease lapses: both replicas drop cart
            for p in (a, b):
                p.wait_config("cds", lambda c: set(c) == {"outbound|80||shop"}, timeout=8)
        finally:
            b.stop()
        # a replica restarted later reads the shared registry back
        b2 = PilotProcess(tmp_path / "b2", store=store)
        b2.start()
        try:
            b2.wait_config("cds", lambda c: set(c) == {"outbound|80||shop"})
        finally:
            b2.stop()
    finally:
        a.stop()


def test_etcd_outage_is_a_503_and_the_pilot_keeps_serving(tmp_path):
    etcd = EtcdServer()
    etcd.start()
    p = PilotProcess(tmp_path, store=f"etcd://{etcd.endpoint}")
    try:
        p.start()
        p.register("inv", "i1", address="127.0.0.1", port=8001)
        p.wait_config("cds", lambda c: "outbound|8001||inv" in c)
        etcd.kill()
        status, out = http(
            "PUT",
            p.api + "/v1/services/inv/instances/i2",
            {"address": "127.0.0.1", "port": 8002},
            timeout=30,
        )
        assert status == 503 and out["field"] == "store", out
        # what was known keeps being served, over the API and over xDS
        assert [
            i["instance_id"] for i in http("GET", p.api + "/v1/services/inv")[1]["instances"]
        ] == ["i1"]
        assert "outbound|8001||inv" in p.config("cds")
        assert fetch(p.xds_port, CDS).resources
        # etcd back: writes work again and the watch picks up where it left off
        eds_before = p.config("eds")["outbound|8001||inv"]
        etcd.start()
        deadline = time.monotonic() + 20
        while http(
            "PUT",
            p.api + "/v1/services/inv/instances/i2",
            {"address": "127.0.0.1", "port": 8001},
            timeout=30,
        )[0] not in (200, 201):
            assert time.monotonic() < deadline, "store never came back"
            time.sleep(0.3)
        p.wait_config(
            "eds", lambda c: c.get("outbound|8001||inv") not in (None, eds_before), timeout=10
        )
        _, out = http("GET", p.api + "/v1/services/inv")
        assert [i["instance_id"] for i in out["instances"]] == ["i1", "i2"]
        _, metrics = http("GET", p.api + "/metrics")
        assert "pilot_api_store_errors_total" in metrics
    finally:
        p.stop()
        etcd.stop()
