"""A scope's route configuration asking for ignore_port_in_host_matching is refused by
name (the RDS update is NACKed): sofamesh's scopes share one route table, so it could not
act on one scope's option."""

from __future__ import annotations

from types import SimpleNamespace

from envoy.config.route.v3 import route_pb2

from sofamesh.proxy.dynamic import DynamicConfig
from sofamesh.xds.scoped import Scopes


def _dynamic() -> DynamicConfig:
    dc = DynamicConfig.__new__(DynamicConfig)
    dc._scoped_users = list  # type: ignore[method-assign]
    dc.scopes = Scopes()
    dc._compiled_vhosts = {}
    dc.server = SimpleNamespace(_per_filter=None, stats=None)
    return dc


def _rc(ignore: bool) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name="r", ignore_port_in_host_matching=ignore)
    vh = rc.virtual_hosts.add(name="v", domains=["reviews"])
    vh.routes.add().match.prefix = "/"
    vh.routes[0].direct_response.status = 200
    return rc


def test_scope_route_config_with_ignore_port_is_refused():
    dc = _dynamic()
    assert dc._scoped_route("r", _rc(False), "reviews") is None
    assert "r" in dc.scopes.entries
    problem = dc._scoped_route("r2", _rc(True), "reviews")
    assert problem is not None
    assert "RouteConfiguration.ignore_port_in_host_matching" in problem
    assert "not implemented by sofamesh" in problem
    assert "r2" not in dc.scopes.entries
