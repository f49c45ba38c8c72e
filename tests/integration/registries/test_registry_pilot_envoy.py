"""Consul and Kubernetes registrations reach real Envoy 1.40 and the sofamesh sidecar (over
Delta ADS) through `sofamesh pilot`:
a Spring-Cloud-style Consul service and a Kubernetes Service with its EndpointSlice become
routes Envoy serves on the pilot's outbound HTTP listener, and health changes in the
registry change where Envoy sends traffic."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import consul
import pytest

from tests.conftest import free_port
from tests.integration.pilot.conftest import SIDECARS, PilotProcess, ads_sidecar
from tests.support.http_upstream import RecordingUpstream
from tests.support.kube_api import FakeKubeAPI, endpoint, endpoint_slice, service
from tests.support.wait import wait_until

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]


def get(port: int, host: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"host": host})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def who(port: int, host: str) -> str | None:
    try:
        status, body = get(port, host)
    except OSError:
        return None
    if status != 200:
        return f"status {status}"
    return body.split()[0].removeprefix("upstream=")


def start_pilot_and_envoy(tmp_path, registries: list[dict], sidecar: str = "envoy"):
    """Envoy on SotW ADS (as before), the sofamesh sidecar on Delta (Istio's default)."""
    cfg = tmp_path / "pilot.yaml"
    cfg.write_text(json.dumps({"registries": registries}))
    pilot = PilotProcess(tmp_path / "pilot", extra=["--config", str(cfg)])
    delta = sidecar != "envoy"
    envoy = ads_sidecar(sidecar, pilot.xds_port, free_port(), delta, tmp_path / sidecar)
    try:
        pilot.start()
        envoy.start()
    except BaseException:
        envoy.stop()
        pilot.stop()
        raise
    return pilot, envoy


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_consul_service_routed_by_envoy_while_passing(consul_agent, tmp_path, sidecar):
    api = consul.Consul(host="127.0.0.1", port=consul_agent.port)
    up = RecordingUpstream(["alpha", "beta"]).start()
    name = "orders-svc"
    pilot = envoy = None
    try:
        for inst in ("alpha", "beta"):
            api.agent.service.register(
                name,
                service_id=f"{name}-{inst}",
                address="127.0.0.1",
                port=up.ports[inst],
                meta={"zone": "zone-a"},
                check=consul.Check.ttl("60s"),
            )
        api.agent.check.ttl_pass(f"service:{name}-alpha")
        pilot, envoy = start_pilot_and_envoy(
            tmp_path,
            [{"type": "consul", "address": consul_agent.http_addr, "services": [name]}],
            sidecar,
        )
        out = pilot.outbound_port
        # only the passing instance gets traffic (beta's TTL check is still critical)
        wait_until(lambda: who(out, name) == "alpha", 15, "orders -> alpha")
        assert {who(out, name) for _ in range(20)} == {"alpha"}

        # beta passes, alpha fails: traffic moves over
        api.agent.check.ttl_pass(f"service:{name}-beta")
        api.agent.check.ttl_fail(f"service:{name}-alpha")
        wait_until(
            lambda: all(who(out, name) == "beta" for _ in range(10)), 10, "orders -> beta only"
        )
    finally:
        if envoy is not None:
            envoy.stop()
        if pilot is not None:
            pilot.stop()
        up.stop()
        for inst in ("alpha", "beta"):
            api.agent.service.deregister(f"{name}-{inst}")


@pytest.mark.parametrize("sidecar", SIDECARS)
async def test_kubernetes_service_routed_by_envoy(tmp_path, sidecar):
    up = RecordingUpstream(["pod1", "pod2"]).start()
    fake = FakeKubeAPI()
    await fake.start()
    pilot = envoy = None
    fqdn = "reviews.shop.svc.cluster.local"
    try:
        fake.apply(
            service(
                "reviews",
                "shop",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9080}],
            )
        )
        # EndpointSlice ports are the pods' ports; here each "pod" is one upstream port, so
        # one slice per pod (the controller also splits slices by port sets)
        fake.apply(
            endpoint_slice(
                "reviews",
                "reviews-a",
                "shop",
                ports=[{"name": "http", "port": up.ports["pod1"], "protocol": "TCP"}],
                endpoints=[endpoint("127.0.0.1", "reviews-pod1", ns="shop")],
            )
        )
        fake.apply(
            endpoint_slice(
                "reviews",
                "reviews-b",
                "shop",
                ports=[{"name": "http", "port": up.ports["pod2"], "protocol": "TCP"}],
                endpoints=[endpoint("127.0.0.1", "reviews-pod2", ns="shop", ready=False)],
            )
        )
        pilot, envoy = await asyncio.to_thread(
            start_pilot_and_envoy,
            tmp_path,
            [{"type": "kubernetes", "api_server": fake.url, "watch_timeout": 30}],
            sidecar,
        )
        out = pilot.outbound_port

        async def seen(n: int = 10) -> set:
            return {await asyncio.to_thread(who, out, fqdn) for _ in range(n)}

        async def until(pred, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            last = None
            while time.monotonic() < deadline:
                last = await pred()
                if last is True:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}; last={last!r}")

        async def only(*names: str):
            s = await seen()
            return True if s == set(names) else s

        # by FQDN and by FQDN:port, to the ready pod only
        await until(lambda: only("pod1"), 15, "reviews -> pod1")
        assert await asyncio.to_thread(who, out, f"{fqdn}:80") == "pod1"

        # pod2 becomes ready: both serve
        fake.apply(
            endpoint_slice(
                "reviews",
                "reviews-b",
                "shop",
                ports=[{"name": "http", "port": up.ports["pod2"], "protocol": "TCP"}],
                endpoints=[endpoint("127.0.0.1", "reviews-pod2", ns="shop")],
            )
        )
        await until(lambda: only("pod1", "pod2"), 10, "both pods")

        # pod1 goes away (its slice deleted): only pod2
        fake.delete("EndpointSlice", "shop", "reviews-a")
        await until(lambda: only("pod2"), 10, "pod2 only")
    finally:
        if envoy is not None:
            await asyncio.to_thread(envoy.stop)
        if pilot is not None:
            await asyncio.to_thread(pilot.stop)
        await fake.stop()
        up.stop()
