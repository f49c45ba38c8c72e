"""Registry sync without sockets: a peer's catalog read and checked (pilot/sync.py
parse_catalog), owners chosen by shortest path, our catalog cut by split horizon."""

from __future__ import annotations

import asyncio
import json

import pytest

from sofamesh.pilot.model import Instance, Locality, Snapshot
from sofamesh.pilot.sync import CatalogError, PeerSync, parse_catalog, service_entry


def section(owner: str, path: list[str], *names: str) -> dict:
    return {
        "cluster": owner,
        "path": path,
        "services": [
            {
                "name": n,
                "namespace": "shop",
                "ports": [{"number": 80, "protocol": "http", "name": "web"}],
                "instances": [
                    {
                        "instance_id": "i1",
                        "address": "10.0.0.1",
                        "port": 8080,
                        "protocol": "http",
                        "labels": {"version": "v1"},
                        "healthy": False,
                        "locality": {"region": "r", "zone": "z"},
                    }
                ],
            }
            for n in names
        ],
    }


def test_catalog_read_into_the_model_with_its_owner():
    body = {
        "cluster": "b",
        "version": "x.1",
        "owners": [section("b", ["b"], "svc-b"), section("c", ["c", "b"], "svc-c")],
    }
    cluster, version, secs, _ = parse_catalog(body, "", "a")
    assert (cluster, version) == ("b", "x.1")
    assert [(s.owner, s.path) for s in secs] == [("b", ["b"]), ("c", ["c", "b"])]
    svc, (inst,) = secs[1].model["svc-c"]
    assert svc.namespace == "shop" and [p.number for p in svc.ports] == [80]
    assert inst.registry == "peer" and inst.namespace == "shop" and inst.healthy is False
    assert dict(inst.labels) == {"version": "v1", "topology.istio.io/cluster": "c"}
    assert inst.locality == Locality("r", "z", "")


def test_a_section_through_us_is_a_loop_and_left_out():
    body = {
        "cluster": "b",
        "version": "1",
        "owners": [section("b", ["b"]), section("c", ["c", "a", "b"], "svc-c")],
    }
    _, _, secs, _ = parse_catalog(body, "b", "a")
    assert [s.owner for s in secs] == ["b"]


@pytest.mark.parametrize(
    "owners, reason, text",
    [
        ([section("c", ["c"], "x")], "claim", "owners[0]: peer 'b' claims entries of 'c'"),
        ([section("b", ["c", "b"], "x")], "claim", "path must run from the owner"),
        ([section("b", ["b", "b"], "x")], "malformed", "owners[0].path: must list"),
        ([section("c", ["c", "b"])], "malformed", "no section of the peer's own cluster 'b'"),
        ([section("b", ["b"], "x", "x")], "malformed", "services[1].name: 'x' twice"),
        ([{**section("b", ["b"]), "cluster": 7}], "malformed", "owners[0].cluster"),
    ],
)
def test_bad_sections_are_named(owners, reason, text):
    with pytest.raises(CatalogError) as e:
        parse_catalog({"cluster": "b", "version": "1", "owners": owners}, "b", "a")
    assert e.value.reason == reason and text in str(e.value), str(e.value)


def test_bad_instance_fields_are_named():
    sec = section("b", ["b"], "x")
    sec["services"][0]["instances"][0]["address"] = "not-an-ip"
    with pytest.raises(CatalogError, match=r"instances\[0\]\.address: 'not-an-ip' is not an IP"):
        parse_catalog({"cluster": "b", "version": "1", "owners": [sec]}, "", "a")


def test_service_entry_round_trips_through_parse():
    inst = Instance("web", "w1", "10.0.0.2", 81, "grpc", (("k", "v"),), 3, True, Locality("r"))
    entry = service_entry(None, "web", [inst])
    body = {
        "cluster": "b",
        "version": "1",
        "owners": [{"cluster": "b", "path": ["b"], "services": [entry]}],
    }
    (sec,) = parse_catalog(body, "", "a")[2]
    _, (back,) = sec.model["web"]
    assert (back.address, back.port, back.protocol, back.weight, back.locality) == (
        "10.0.0.2",
        81,
        "grpc",
        3,
        Locality("r"),
    )


class FakePilot:
    def __init__(self, own: Snapshot):
        self.registries = [type("R", (), {"name": "api"})()]
        self.snapshots = {"api": own}
        self.change_listeners: list = []
        self.registry_errors: dict = {}


def test_shortest_path_wins_and_split_horizon_cuts():
    async def run():
        sync = PeerSync("a", ["http://127.0.0.1:1", "http://127.0.0.1:2"])
        sync.pilot = FakePilot(Snapshot())
        sync.pilot.registries.append(sync)
        far, near = sync.peers
        for peer, cluster, secs in (
            (far, "b", [section("b", ["b"]), section("c", ["c", "d", "b"], "svc-c")]),
            (near, "d", [section("d", ["d"]), section("c", ["c", "d"], "svc-c")]),
        ):
            body = {"cluster": cluster, "version": "1", "owners": secs}
            peer.sections = {s.owner: s for s in parse_catalog(body, "", "a")[2]}
        sync._choose()
        assert sync._chosen["c"][0] is near
        assert len(sync.snapshot().instances["svc-c"]) == 1  # once, whatever the routes
        sync._refresh()
        to_d = json.loads(sync.catalog("d"))
        assert [o["cluster"] for o in to_d["owners"]] == ["a", "b"]  # c's came through d
        to_b = json.loads(sync.catalog("b"))
        assert [(o["cluster"], o["path"]) for o in to_b["owners"]] == [
            ("a", ["a"]),
            ("c", ["c", "d", "a"]),
            ("d", ["d", "a"]),
        ]

    asyncio.run(run())


def test_unchanged_entries_reused_changed_ones_checked_again():
    first = {"cluster": "b", "version": "1", "owners": [section("b", ["b"], "x", "y")]}
    (sec,) = parse_catalog(first, "", "a")[2]
    again = json.loads(json.dumps(first))
    again["owners"][0]["services"][1]["instances"][0]["port"] = 9090
    (sec2,) = parse_catalog(again, "b", "a", {"b": sec})[2]
    assert sec2.model["x"] is sec.model["x"]  # the same objects: the pilot skips it
    assert sec2.model["y"][1][0].port == 9090
    again = json.loads(json.dumps(again))  # each answer is a fresh json.loads
    again["owners"][0]["services"][1]["instances"][0]["port"] = 0
    with pytest.raises(CatalogError, match=r"services\[1\]\.instances\[0\]\.port"):
        parse_catalog(again, "b", "a", {"b": sec2})
    again = json.loads(json.dumps(again))
    again["owners"][0]["services"][1] = again["owners"][0]["services"][0]  # x twice
    with pytest.raises(CatalogError, match=r"services\[1\]\.name: 'x' twice"):
        parse_catalog(again, "b", "a", {"b": sec2})
