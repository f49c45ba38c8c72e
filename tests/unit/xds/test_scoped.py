"""xds.scoped: the scoped-routes shapes sofamesh serves, and one table from the scopes."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.xds.client import SRDS, Update
from sofamesh.xds.scoped import Scopes, check_domains, check_scoped_routes, key_of

ADS = {"ads": {}}


def scoped_routes(**over):
    d = {
        "name": "15001",
        "scope_key_builder": {
            "fragments": [
                {
                    "header_value_extractor": {
                        "name": ":authority",
                        "element_separator": ":",
                        "index": 0,
                    }
                }
            ]
        },
        "rds_config_source": ADS,
        "scoped_rds": {"scoped_rds_config_source": ADS},
    }
    d.update(over)
    return json_format.ParseDict(d, hcm_pb2.ScopedRoutes())


def scope(name, key, route=None):
    return json_format.ParseDict(
        {
            "name": name,
            "route_configuration_name": route or name,
            "key": {"fragments": [{"string_key": key}]},
        },
        scoped_route_pb2.ScopedRouteConfiguration(),
    )


def rc(name, *domains):
    return json_format.ParseDict(
        {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": list(domains),
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )


def test_the_pilots_shape_is_served():
    sr = scoped_routes()
    check_scoped_routes(sr, "p")
    assert key_of(sr, "reviews:9080") == "reviews" and key_of(sr, "reviews") == "reviews"
    assert check_domains(rc("r", "reviews", "reviews:9080"), "reviews", [sr]) is None


@pytest.mark.parametrize(
    "over,field",
    [
        ({"rds_config_source": {"path_config_source": {"path": "/x"}}}, "rds_config_source"),
        (
            {
                "scope_key_builder": {
                    "fragments": [{"header_value_extractor": {"name": ":authority", "index": 0}}]
                    * 2
                }
            },
            "scope_key_builder.fragments",
        ),
        (
            {
                "scope_key_builder": {
                    "fragments": [{"header_value_extractor": {"name": "x-tenant", "index": 0}}]
                }
            },
            "header_value_extractor.name",
        ),
    ],
)
def test_other_shapes_are_refused_by_name(over, field):
    with pytest.raises(UnsupportedConfig, match=field.replace(".", r"\.")):
        check_scoped_routes(scoped_routes(**over), "p")


@pytest.mark.parametrize("domains", [("*",), ("reviews", "ratings"), ("*.reviews",)])
def test_domains_that_another_key_or_a_wildcard_would_reach_are_refused(domains):
    assert "scope key" in check_domains(rc("r", *domains), "reviews", [scoped_routes()])


def test_one_table_of_every_scope_with_routes():
    from sofamesh.proxy.dynamic_state import _Held
    from sofamesh.proxy.routes import compile_vhosts

    s = Scopes()
    errs = s.apply(
        Update(
            SRDS,
            "1",
            {"a": ("1", scope("a", "reviews")), "b": ("1", scope("b", "ratings"))},
            [],
            True,
        ),
        _Held,
    )
    assert errs == {} and not s.ready()
    assert s.route_keys() == {"a": "reviews", "b": "ratings"}
    s.entries["a"] = compile_vhosts(rc("a", "reviews", "reviews:80"))
    assert not s.ready()
    s.entries["b"] = compile_vhosts(rc("b", "ratings"))
    assert s.ready()
    t = s.table(False)
    for host in ("reviews", "reviews:80", "ratings"):
        assert t.select_host(host) is not None
    assert t.select_host("ratings:80") is None and t.select_host("other") is None
    # SotW: a scope left out is gone; a key taken twice is refused
    errs = s.apply(
        Update(
            SRDS,
            "2",
            {"a": ("2", scope("a", "reviews")), "c": ("2", scope("c", "reviews"))},
            [],
            True,
        ),
        _Held,
    )
    assert "key" in errs["c"] and set(s.held) == {"a"}
    assert s.table(False).select_host("ratings") is None
    assert s.table(False).select_host("reviews:80") is not None
