"""proxy/pool_xds.PoolApplier with stand-in workers (no processes): the ACK waits for every
live worker, one worker's rejection NACKs with its error, a dead worker does not hold the
update, and a (re)starting worker's replay is what they all accepted, in Envoy's order."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from sofamesh.proxy.pool_xds import PoolApplier, decode_update
from sofamesh.xds.client import CDS, EDS, LDS, Update


class FakeWorker:
    def __init__(self, index: int, reject: dict | None = None, die: bool = False) -> None:
        self.index = index
        self.ready = True
        self.reject = reject or {}
        self.die = die
        self.dead = False
        self.got: list[dict] = []

    def alive(self) -> bool:
        return not self.dead

    async def request(self, op: str, timeout: float = 5.0, **kw):
        await asyncio.sleep(0.01 * self.index)  # replies arrive out of order
        if self.die:
            self.dead = True
            raise ConnectionError("worker went away")
        self.got.append(kw["update"])
        names = [r[0] for r in kw["update"]["resources"]]
        errors = {n: self.reject[n] for n in names if n in self.reject}
        return {"errors": errors, "state": {"eds": names, "warming_clusters": []}}


def clusters(*names: str) -> Update:
    res = {n: ("v1", cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS)) for n in names}
    return Update(CDS, "v1", res, [], True)


async def test_ack_after_every_worker_and_union_of_errors():
    ws = [FakeWorker(0), FakeWorker(1, reject={"b": "Error adding/updating cluster(s) b: x"})]
    pa = PoolApplier(ws)
    errors = await pa.apply(clusters("a", "b"))
    assert errors == {"b": "Error adding/updating cluster(s) b: x"}  # worker 1's, by name
    assert all(len(w.got) == 1 for w in ws)  # both were sent the update
    assert set(pa.held[CDS]) == {"a"}  # what a worker rejected is not held
    assert pa.names(EDS) == {"a", "b"}  # the union of what the workers want


async def test_dead_worker_does_not_hold_the_update_and_a_hung_one_nacks():
    pa = PoolApplier([FakeWorker(0), FakeWorker(1, die=True)])
    assert await pa.apply(clusters("a")) == {}
    assert set(pa.held[CDS]) == {"a"}  # the restarted worker will get it

    class Hung(FakeWorker):
        async def request(self, op, timeout=5.0, **kw):
            raise TimeoutError

    pa = PoolApplier([FakeWorker(0), Hung(1)])
    errors = await pa.apply(clusters("a"))
    assert list(errors) == ["worker 1"] and "did not apply" in errors["worker 1"]


async def test_replay_is_held_config_in_order_with_resource_versions():
    pa = PoolApplier([FakeWorker(0)])
    await pa.apply(clusters("a", "b"))
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="a")
    await pa.apply(Update(EDS, "e1", {"a": ("e1", cla)}, [], False))
    # an unchanged resource keeps the version that last changed it (Envoy)
    up = clusters("a")
    up.version = "v2"
    up.resources = {"a": ("v2", up.resources["a"][1])}
    await pa.apply(up)
    assert pa.held[CDS]["a"].version == "v1" and "b" not in pa.held[CDS]  # full state
    ups, ended = pa.replay()
    assert [u["type"] for u in ups] == [CDS, EDS] and ended == []
    first = decode_update(ups[0])
    assert first.version == "v2" and first.full_state
    assert {n: v for n, (v, _) in first.resources.items()} == {"a": "v1"}
    assert decode_update(ups[1]).resources["a"][1].cluster_name == "a"
    assert LDS not in pa.type_versions


@pytest.mark.parametrize("kind", ["clusters", "listeners"])
async def test_end_warming_reaches_workers_and_replays(kind):
    class W(FakeWorker):
        async def request(self, op, timeout=5.0, **kw):
            self.got.append({"op": op, **kw})
            return {"state": {}}

    ws = [W(0), W(1)]
    pa = PoolApplier(ws)
    pa.end_warming(kind)
    await asyncio.sleep(0.05)
    assert all(w.got == [{"op": "xds_end_warming", "kind": kind}] for w in ws)
    assert pa.replay()[1] == [kind]
