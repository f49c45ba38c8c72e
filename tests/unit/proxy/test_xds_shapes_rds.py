"""proxy/xds_shapes: which filter chains of a listener take their routes by RDS (each its
own name, the default chain too), and where an HCM with rds hides inside another filter."""

from __future__ import annotations

from google.protobuf import json_format

from sofamesh.config import protos
from sofamesh.proxy.xds_shapes import nested_rds_path, rds_chains, single_hcm

_T = "type.googleapis.com/envoy."
HCM = _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router"}


def _hcm(prefix: str, rds: str = "") -> dict:
    hcm: dict = {"@type": HCM, "stat_prefix": prefix, "http_filters": [ROUTER]}
    if rds:
        hcm["rds"] = {"route_config_name": rds, "config_source": {"ads": {}}}
    else:
        hcm["route_config"] = {"name": "inline"}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}


def _listener(d: dict):
    from envoy.config.listener.v3 import listener_pb2

    protos.import_all()
    return json_format.ParseDict(d, listener_pb2.Listener())


def test_each_chain_with_rds_is_listed_with_its_own_name():
    lst = _listener(
        {
            "name": "l",
            "filter_chains": [
                {"filters": [_hcm("a", rds="ra")]},
                {"filters": [_hcm("i")]},
                {"filters": [_hcm("b", rds="rb")]},
            ],
            "default_filter_chain": {"filters": [_hcm("d", rds="ra")]},
        }
    )
    got = [(i, name, hcm.stat_prefix, path) for i, name, hcm, path in rds_chains(lst)]
    assert got == [
        (0, "ra", "a", "filter_chains[0].filters[0]"),
        (2, "rb", "b", "filter_chains[2].filters[0]"),
        (-1, "ra", "d", "default_filter_chain.filters[0]"),
    ]
    assert single_hcm(lst) is None  # several chains: no one HCM (scoped routes need one)
    assert nested_rds_path(lst) is None


def test_single_chain():
    lst = _listener({"name": "l", "filter_chains": [{"filters": [_hcm("a", rds="ra")]}]})
    assert [name for _, name, _, _ in rds_chains(lst)] == ["ra"]
    assert single_hcm(lst).stat_prefix == "a"


def test_rds_nested_in_another_filter_is_found_by_path():
    # an HCM with rds that is not the chain's terminal filter
    lst = _listener(
        {
            "name": "l",
            "filter_chains": [
                {"filters": [_hcm("a")]},
                {"filters": [_hcm("b", rds="rb"), _hcm("c")]},
            ],
        }
    )
    assert nested_rds_path(lst) == "filter_chains[1].filters[0]"
    assert rds_chains(lst) == []
