"""The ADS server's protocol behaviour seen by a real gRPC client: versions, nonces, ACK/NACK,
per-node pushes, debouncing, make-before-break order, and Delta's resource bookkeeping."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from sofamesh.pilot.core import Pilot
from sofamesh.pilot.generate import CDS, EDS, LDS, RDS, Generator
from sofamesh.pilot.model import Instance, Snapshot

NODE = "sidecar~127.0.0.1~pod.ns~ns.svc.cluster.local"


class MemoryRegistry:
    """A registry held in memory: the tests change it and the pilot sees `on_change`."""

    name = "mem"

    def __init__(self) -> None:
        self.instances: dict[str, list[Instance]] = {}
        self._cb = None

    async def start(self, on_change) -> None:
        self._cb = on_change
        on_change(self.name)

    async def stop(self) -> None:
        self._cb = None

    def snapshot(self) -> Snapshot:
        return Snapshot(services={}, instances={k: list(v) for k, v in self.instances.items()})

    def set(self, service: str, *ports: int, weight: int = 1) -> None:
        self.instances[service] = [
            Instance(
                service,
                f"{service}-{p}",
                "127.0.0.1",
                p,
                weight=weight,
                service_port=80,
                registry="mem",
            )
            for p in ports
        ]
        self._cb(self.name)

    def drop(self, service: str) -> None:
        self.instances.pop(service, None)
        self._cb(self.name)


@pytest.fixture
async def env():
    reg = MemoryRegistry()
    pilot = Pilot(
        [reg], gen=Generator(outbound_port=15001, listener_address="127.0.0.1"), debounce=0.05
    )
    await pilot.start()
    port = await pilot.ads.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pilot, reg, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await pilot.ads.stop(0)
        await pilot.stop()


class Stream:
    """A client stream whose responses are pumped into a queue (cancelling a grpc.aio read
    would cancel the whole call)."""

    def __init__(self, call):
        self.call = call
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self):
        try:
            async for r in self.call:
                self.queue.put_nowait(r)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass

    async def recv(self, timeout=3.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, wait=0.4) -> None:
        await asyncio.sleep(wait)
        if not self.queue.empty():
            r = self.queue.get_nowait()
            pytest.fail(f"unexpected response {r.type_url}")


class Sotw(Stream):
    def __init__(self, stub, node=NODE):
        super().__init__(stub.StreamAggregatedResources())
        self.node = node
        self.first = True

    async def ask(self, t, names=(), version="", nonce="", error=None):
        req = discovery_pb2.DiscoveryRequest(
            type_url=t, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if self.first:
            req.node.id = self.node
            self.first = False
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)


def names_of(r) -> list[str]:
    out = []
    for a in r.resources:
        msg = {
            CDS: cluster_pb2.Cluster,
            EDS: endpoint_pb2.ClusterLoadAssignment,
            RDS: route_pb2.RouteConfiguration,
        }.get(r.type_url)
        if msg is None:
            from envoy.config.listener.v3 import listener_pb2

            msg = listener_pb2.Listener
        m = msg.FromString(a.value)
        out.append(getattr(m, "name", "") or getattr(m, "cluster_name", ""))
    return sorted(out)


async def test_sotw_versions_ack_and_only_changed_types(env):
    pilot, reg, stub = env
    reg.set("reviews", 9001)
    await asyncio.sleep(0.2)
    c = Sotw(stub)
    await c.ask(CDS)
    r = await c.recv()
    assert r.type_url == CDS and names_of(r) == ["outbound|80||reviews"]
    assert r.version_info == pilot.gen.version(CDS) and r.nonce
    await c.ask(CDS, (), r.version_info, r.nonce)  # ACK
    await c.ask(EDS, ["outbound|80||reviews"])
    e = await c.recv()
    assert e.type_url == EDS and names_of(e) == ["outbound|80||reviews"]
    await c.ask(EDS, ["outbound|80||reviews"], e.version_info, e.nonce)
    await c.nothing()  # an ACK is answered by silence
    # an instance change is an EDS-only push; CDS is not resent
    reg.set("reviews", 9001, 9002)
    e2 = await c.recv()
    assert e2.type_url == EDS and e2.version_info != e.version_info and e2.nonce != e.nonce
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(e2.resources[0].value)
    assert sorted(
        lb.endpoint.address.socket_address.port_value for lb in cla.endpoints[0].lb_endpoints
    ) == [9001, 9002]
    await c.ask(EDS, ["outbound|80||reviews"], e2.version_info, e2.nonce)
    await c.nothing()
    conn = next(iter(pilot.ads.connections.values()))
    assert conn.node_id == NODE
    assert conn.describe()["node_info"] == {
        "type": "sidecar",
        "ip": "127.0.0.1",
        "pod": "pod",
        "namespace": "ns",
        "domain": "ns.svc.cluster.local",
    }
    assert conn.watches[EDS].version_acked == e2.version_info


async def test_nack_is_recorded_and_not_retried(env):
    pilot, reg, stub = env
    reg.set("reviews", 9001)
    await asyncio.sleep(0.2)
    c = Sotw(stub)
    await c.ask(CDS)
    r = await c.recv()
    await c.ask(CDS, (), "", r.nonce, error="cluster outbound|80||reviews: bad thing")  # NACK
    await c.nothing(0.6)  # not pushed again in a loop
    assert pilot.metrics.get("pilot_xds_nacks_total", type="cds") == 1
    assert pilot.ads.nacks[-1]["error"] == "cluster outbound|80||reviews: bad thing"
    assert pilot.ads.nacks[-1]["version"] == r.version_info and pilot.ads.nacks[-1]["node"] == NODE
    conn = next(iter(pilot.ads.connections.values()))
    assert conn.watches[CDS].version_acked == ""
    assert conn.describe()["types"]["cds"]["status"] == "NACKED"
    # the next real change is pushed as usual
    reg.set("ratings", 9100)
    r2 = await c.recv()
    assert r2.type_url == CDS and names_of(r2) == ["outbound|80||ratings", "outbound|80||reviews"]


async def test_stale_nonce_is_ignored(env):
    pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    c = Sotw(stub)
    await c.ask(CDS)
    r1 = await c.recv()
    reg.set("b", 9002)
    r2 = await c.recv()
    # a NACK for the older response is stale: not recorded
    await c.ask(CDS, (), "", r1.nonce, error="old")
    await c.ask(CDS, (), r2.version_info, r2.nonce)
    await c.nothing()
    assert pilot.metrics.get("pilot_xds_nacks_total", type="cds") == 0
    assert pilot.metrics.get("pilot_xds_stale_nonce_total", type="cds") == 1


async def test_pushes_reach_only_nodes_whose_resources_changed(env):
    _pilot, reg, stub = env
    reg.set("a", 9001)
    reg.set("b", 9002)
    await asyncio.sleep(0.2)
    ca, cb = Sotw(stub, NODE.replace("pod", "pa")), Sotw(stub, NODE.replace("pod", "pb"))
    for c, svc in ((ca, "a"), (cb, "b")):
        await c.ask(EDS, [f"outbound|80||{svc}"])
        r = await c.recv()
        assert names_of(r) == [f"outbound|80||{svc}"]
        await c.ask(EDS, [f"outbound|80||{svc}"], r.version_info, r.nonce)
    reg.set("a", 9001, 9003)
    r = await ca.recv()
    assert names_of(r) == ["outbound|80||a"]
    await cb.nothing()


async def test_changes_are_debounced_into_one_push(env):
    pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    c = Sotw(stub)
    await c.ask(EDS, ["outbound|80||a"])
    r = await c.recv()
    await c.ask(EDS, ["outbound|80||a"], r.version_info, r.nonce)
    before = pilot.rebuilds
    for i in range(20):  # a burst of registry events within the debounce window
        reg.set("a", 9001, 10000 + i)
        await asyncio.sleep(0.002)
    r = await c.recv()
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(r.resources[0].value)
    assert sorted(
        lb.endpoint.address.socket_address.port_value for lb in cla.endpoints[0].lb_endpoints
    ) == [9001, 10019]
    await c.nothing()
    assert pilot.rebuilds - before <= 2


async def test_make_before_break_order(env):
    _pilot, reg, stub = env
    reg.set("old", 9001)
    await asyncio.sleep(0.2)
    c = Sotw(stub)
    await c.ask(CDS)
    r = await c.recv()
    await c.ask(CDS, (), r.version_info, r.nonce)
    await c.ask(LDS)
    r = await c.recv()
    await c.ask(LDS, (), r.version_info, r.nonce)
    await c.ask(RDS, ["15001"])
    r = await c.recv()
    await c.ask(RDS, ["15001"], r.version_info, r.nonce)
    await c.nothing(0.2)
    # one change: "old" leaves, "new" arrives
    reg.instances.pop("old")
    reg.set("new", 9002)
    seq = []
    for _ in range(3):
        r = await c.recv()
        seq.append((r.type_url, names_of(r)))
    assert seq[0] == (CDS, ["outbound|80||new", "outbound|80||old"])  # add, keep the old one
    assert seq[1][0] == RDS  # routes move to the new cluster
    assert seq[1][1] == ["15001"]
    assert seq[2] == (CDS, ["outbound|80||new"])  # only then is the old cluster removed
    await c.nothing(0.2)


class Delta(Stream):
    def __init__(self, stub):
        super().__init__(stub.DeltaAggregatedResources())
        self.first = True

    async def ask(self, t, sub=(), unsub=(), initial=None, nonce="", error=None):
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=t,
            resource_names_subscribe=list(sub),
            resource_names_unsubscribe=list(unsub),
            response_nonce=nonce,
        )
        if initial:
            for k, v in initial.items():
                req.initial_resource_versions[k] = v
        if self.first:
            req.node.id = NODE
            self.first = False
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)


async def test_delta_versions_removals_and_reconnect(env):
    pilot, reg, stub = env
    reg.set("a", 9001)
    reg.set("b", 9002)
    await asyncio.sleep(0.2)
    c = Delta(stub)
    await c.ask(CDS)  # wildcard
    r = await c.recv()
    got = {res.name: res.version for res in r.resources}
    assert set(got) == {"outbound|80||a", "outbound|80||b"}
    assert got["outbound|80||a"] == pilot.gen.all[CDS]["outbound|80||a"].version
    assert r.system_version_info == pilot.gen.version(CDS)
    await c.ask(CDS, nonce=r.nonce)
    await c.ask(EDS, sub=["outbound|80||a"])
    e = await c.recv()
    assert [x.name for x in e.resources] == ["outbound|80||a"]
    await c.ask(EDS, nonce=e.nonce)
    await c.nothing()
    # a removed service: CDS removal, and EDS removal for the subscribed assignment
    reg.drop("b")
    r = await c.recv()
    assert r.type_url == CDS and list(r.removed_resources) == ["outbound|80||b"] and not r.resources
    await c.ask(CDS, nonce=r.nonce)
    await c.nothing()  # EDS for b was never subscribed: nothing to remove there
    # unsubscribe, then an update of a is not sent
    await c.ask(EDS, unsub=["outbound|80||a"])
    reg.set("a", 9001, 9005)
    await c.nothing()

    # reconnect with what the client holds: only differences come back
    c2 = Delta(stub)
    held = {
        "outbound|80||a": pilot.gen.all[CDS]["outbound|80||a"].version,
        "outbound|80||gone": "x",
    }
    reg.set("c", 9003)
    await asyncio.sleep(0.2)
    await c2.ask(CDS, initial=held)
    r = await c2.recv()
    assert [x.name for x in r.resources] == ["outbound|80||c"]  # a is current: not resent
    if not r.removed_resources:  # removals follow the additions (make-before-break)
        r = await c2.recv()
    assert list(r.removed_resources) == ["outbound|80||gone"]
    await c2.nothing()


async def test_delta_nack_is_recorded(env):
    pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    c = Delta(stub)
    await c.ask(CDS)
    r = await c.recv()
    await c.ask(CDS, nonce=r.nonce, error="rejected")
    await c.nothing()
    assert pilot.metrics.get("pilot_xds_nacks_total", type="cds") == 1
    assert pilot.ads.nacks[-1]["error"] == "rejected"


async def test_model_is_complete_before_xds_is_served():
    """A (re)started pilot builds from every registry's first read before serving, so a
    reconnecting Delta client never sees an empty model (which would remove its config)."""
    reg = MemoryRegistry()
    reg.instances["a"] = [Instance("a", "a-1", "127.0.0.1", 9001, service_port=80, registry="mem")]
    pilot = Pilot([reg], debounce=10.0)  # a debounced rebuild would come far too late
    await pilot.start()
    try:
        assert "outbound|80||a" in pilot.gen.all[CDS]
        assert "outbound|80||a" in pilot.gen.all[EDS]
    finally:
        await pilot.stop()


async def test_nacks_are_listed_on_the_debug_endpoint(env):
    import aiohttp

    from sofamesh.pilot.api import RestApi
    from sofamesh.pilot.store import BaseStore

    pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    api = RestApi(BaseStore(), pilot)
    port = await api.start("127.0.0.1", 0)
    try:
        c = Sotw(stub)
        await c.ask(CDS)
        r = await c.recv()
        await c.ask(CDS, (), "", r.nonce, error="no such filter")
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/debug/nacks") as resp:
                nacks = (await resp.json())["nacks"]
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
        assert [(n["node"], n["type"], n["version"], n["error"]) for n in nacks] == [
            (NODE, "cds", r.version_info, "no such filter")
        ]
        assert 'pilot_xds_nacks_total{type="cds"} 1' in metrics
    finally:
        await api.stop()


async def test_internal_error_ends_only_that_stream(env, monkeypatch):
    from sofamesh.pilot import server as server_mod

    pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    real = server_mod.Connection.build_responses

    def broken(self):
        if self.node_id.endswith("broken"):
            raise RuntimeError("generator bug")
        return real(self)

    monkeypatch.setattr(server_mod.Connection, "build_responses", broken)
    bad = stub.StreamAggregatedResources()
    req = discovery_pb2.DiscoveryRequest(type_url=CDS)
    req.node.id = "broken"
    await bad.write(req)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(bad.read(), 3)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert pilot.metrics.get("pilot_xds_internal_errors_total") == 1
    # every other stream, and the server, carry on
    c = Sotw(stub)
    await c.ask(CDS)
    r = await c.recv()
    assert names_of(r) == ["outbound|80||a"]
    assert pilot.metrics.get("pilot_xds_connections") == 1


async def test_replaced_cluster_gets_its_endpoints_again(env):
    """A cluster replaced in place (here: http -> grpc, so HTTP/2 upstream) warms again in
    Envoy; its EDS subscription is unchanged, so the pilot resends the endpoints unasked."""
    _pilot, reg, stub = env
    reg.set("a", 9001)
    await asyncio.sleep(0.2)
    for delta in (False, True):
        c = Delta(stub) if delta else Sotw(stub)
        await c.ask(CDS)
        r = await c.recv()
        await (c.ask(CDS, nonce=r.nonce) if delta else c.ask(CDS, (), r.version_info, r.nonce))
        await (c.ask(EDS, sub=["outbound|80||a"]) if delta else c.ask(EDS, ["outbound|80||a"]))
        e = await c.recv()
        await (
            c.ask(EDS, nonce=e.nonce)
            if delta
            else c.ask(EDS, ["outbound|80||a"], e.version_info, e.nonce)
        )
        await c.nothing(0.2)
        proto = "grpc" if not delta else "http"
        reg.instances["a"] = [
            Instance(
                "a", "a-9001", "127.0.0.1", 9001, protocol=proto, service_port=80, registry="mem"
            )
        ]
        reg._cb(reg.name)
        first, second = await c.recv(), await c.recv()
        assert (first.type_url, second.type_url) == (CDS, EDS)
        got = [x.name for x in second.resources] if delta else names_of(second)
        assert got == ["outbound|80||a"]
