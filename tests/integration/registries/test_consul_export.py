"""Registry sync into Consul: `sofamesh pilot` with a Consul registry `export: true` writes the
mesh's services (registered through its REST API, or synced from a peer cluster's pilot) into
a real Consul 1.8.7 agent, where a consumer outside the mesh (Spring Cloud's discovery client
asks `/v1/health/service/<name>?passing`) finds them; and takes them out again."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tests.integration.pilot.conftest import PilotProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


def consul(agent, method: str, path: str, body=None):
    req = urllib.request.Request(
        agent.http_addr + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read()
    return json.loads(text) if text.strip() else None


def passing(agent, name: str) -> list[tuple[str, int, dict, list]]:
    """What a Spring Cloud consumer gets: (address, port, meta, tags) of passing instances."""
    out = consul(agent, "GET", f"/v1/health/service/{name}?passing=true") or []
    return sorted(
        (e["Service"]["Address"], e["Service"]["Port"], e["Service"]["Meta"], e["Service"]["Tags"])
        for e in out
    )


def test_mesh_services_written_into_consul_and_taken_out(consul_agent, tmp_path):
    tag = uuid.uuid4().hex[:6]
    orders, payments, stale, spring = (
        f"{n}-{tag}" for n in ("orders", "payments", "stale", "spring")
    )
    # what a previous run of this pilot left on its export node: removed at start
    consul(consul_agent, "PUT", "/v1/catalog/register", {
        "Node": "sofamesh", "Address": "127.0.0.1",
        "Service": {"ID": f"sofamesh-{stale}-x", "Service": stale, "Port": 1,
                    "Meta": {"sofamesh-export": "consul"}},
    })  # fmt: skip
    # a Spring Cloud service registered in Consul itself: read, never written back
    consul(consul_agent, "PUT", "/v1/agent/service/register", {
        "Name": spring, "ID": f"{spring}-1", "Address": "127.0.0.1", "Port": 8181,
        "Meta": {"protocol": "http"},
    })  # fmt: skip
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(
        "registries:\n"
        f"  - {{type: consul, address: '{consul_agent.http_addr}', export: true, wait: 5}}\n"
    )
    peer = PilotProcess(tmp_path / "b", extra=["--cluster", "b"]).start()
    pilot = PilotProcess(
        tmp_path / "a", extra=["--cluster", "a", "--peer", peer.api, "--config", str(cfg)]
    )
    try:
        pilot.start()
        wait_until(
            lambda: not consul(consul_agent, "GET", f"/v1/catalog/service/{stale}"),
            10,
            "stale entry gone",
        )
        pilot.register(orders, "o1", address="10.1.0.5", port=8080, protocol="http",
                       labels={"version": "v2"}, weight=3)  # fmt: skip
        pilot.register(orders, "o2", address="10.1.0.6", port=8080, protocol="http",
                       healthy=False)  # fmt: skip
        peer.register(payments, "p1", address="10.2.0.7", port=20880, protocol="dubbo")
        got = wait_until(lambda: passing(consul_agent, orders), 10, "orders in Consul")
        ((addr, port, meta, tags),) = got  # the unhealthy one is not passing
        assert (addr, port) == ("10.1.0.5", 8080)
        assert meta == {"protocol": "http", "sofamesh-export": "consul", "version": "v2"}
        assert tags == ["version=v2"]

        # o2 (unhealthy) may be written a debounce after o1: wait for both entries
        def both() -> list | None:
            got = consul(consul_agent, "GET", f"/v1/health/service/{orders}") or []
            return got if len(got) == 2 else None

        everything = wait_until(both, 10, "o1 and o2 in Consul")
        assert sorted(c["Status"] for e in everything for c in e["Checks"]) == [
            "critical",
            "passing",
        ]
        assert [e["Service"]["Weights"]["Passing"] for e in everything if e["Service"]["Port"]] in (
            [3, 1],
            [1, 3],
        )
        # a service of the peer cluster, as this pilot learned it
        ((addr, port, meta, tags),) = wait_until(
            lambda: passing(consul_agent, payments), 10, "synced payments in Consul"
        )
        assert (addr, port, meta["protocol"]) == ("10.2.0.7", 20880, "dubbo")
        assert "topology.istio.io/cluster=b" in tags
        # the Spring service is imported, and not exported back; our exports not imported
        assert [
            e["Service"]["ID"] for e in consul(consul_agent, "GET", f"/v1/health/service/{spring}")
        ] == [f"{spring}-1"]
        status, out = pilot_get(pilot, f"/v1/services/{orders}")
        assert status == 200 and sorted(i["instance_id"] for i in out["instances"]) == ["o1", "o2"]
        assert pilot_get(pilot, f"/v1/services/{spring}")[0] == 200
        # taken out: deregistered here, and gone from the peer
        pilot.deregister(orders, "o1")
        pilot.deregister(orders, "o2")
        peer.deregister(payments, "p1")
        for name in (orders, payments):
            wait_until(
                lambda name=name: not consul(consul_agent, "GET", f"/v1/catalog/service/{name}"),
                10,
                f"{name} gone from Consul",
            )
    finally:
        pilot.stop()
        peer.stop()
        consul(consul_agent, "PUT", f"/v1/agent/service/deregister/{spring}-1")


def pilot_get(p: PilotProcess, path: str):
    from tests.integration.pilot.conftest import http

    return http("GET", p.api + path)


def test_export_address_must_be_host_port_or_sidecar():
    from sofamesh.pilot import registries
    from sofamesh.pilot.registries import RegistryConfigError

    with pytest.raises(RegistryConfigError, match="export_address"):
        registries.build({"type": "consul", "export": True, "export_address": "nohost"})
    reg = registries.build({"type": "consul", "export": True, "export_address": "sidecar"})
    assert reg.exports and reg.export_to.via_sidecar
