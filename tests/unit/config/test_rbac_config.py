"""RBAC config: what sofamesh does not implement is refused by path at load time (config
validation), and the compiler refuses it by path too (for configs that reach it otherwise,
e.g. xDS resources)."""

from __future__ import annotations

import pytest

from sofamesh.config import ConfigError, load_bootstrap

LISTENER = """
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {{virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  p:
                    permissions: [{permission}]
                    principals: [{principal}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
PFX = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
    ".typed_config.rules.policies['p']"
)


def _load(tmp_path, permission: str = "{any: true}", principal: str = "{any: true}"):
    p = tmp_path / "b.yaml"
    p.write_text(LISTENER.format(permission=permission, principal=principal))
    return load_bootstrap(str(p))


def test_implemented_rules_load(tmp_path):
    _load(
        tmp_path,
        "{and_rules: {rules: [{header: {name: ':method', string_match: {exact: GET}}}, "
        "{url_path: {path: {prefix: /a}}}, {destination_port_range: {start: 1, end: 9}}, "
        "{not_rule: {destination_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]}}",
        "{or_ids: {ids: [{remote_ip: {address_prefix: '::1', prefix_len: 128}}, "
        "{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]}}",
    )


@pytest.mark.parametrize(
    ("permission", "principal", "path", "message"),
    [
        (
            "{any: true}",
            (
                "{sourced_metadata: {metadata_matcher: "
                "{filter: f, path: [{key: k}], value: {present_match: true}}}}"
            ),
            "principals[0].sourced_metadata",
            "Principal.sourced_metadata is not implemented by sofamesh",
        ),
        (
            (
                "{sourced_metadata: {metadata_matcher: "
                "{filter: f, path: [{key: k}], value: {present_match: true}}}}"
            ),
            "{any: true}",
            "permissions[0].sourced_metadata",
            "Permission.sourced_metadata is not implemented by sofamesh",
        ),
        (
            "{any: true}",
            (
                "{filter_state: {key: k, address_match: {ranges: "
                "[{address_prefix: 10.0.0.0, prefix_len: 8}]}}}"
            ),
            "principals[0].filter_state.address_match",
            "FilterStateMatcher.address_match is not implemented by sofamesh",
        ),
    ],
)
def test_unimplemented_rules_refused_by_path(tmp_path, permission, principal, path, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, permission, principal)
    assert [str(p) for p in e.value.problems] == [f"{PFX}.{path}: {message}"]


def test_authenticated_loads_and_compiles(tmp_path):
    from envoy.config.rbac.v3 import rbac_pb2

    from sofamesh._core.rbac import AuthenticatedRule
    from sofamesh.filters.http.rbac import _Compiler

    _load(tmp_path, "{requested_server_name: {exact: a.example}}", "{authenticated: {}}")
    p = rbac_pb2.Principal()
    p.authenticated.principal_name.exact = "spiffe://x"
    assert isinstance(_Compiler().principal(p, "x.principals[0]"), AuthenticatedRule)


@pytest.mark.parametrize(
    ("permission", "principal", "where"),
    [
        ({"header": {"name": "x", "present_match": True}}, {"any": True}, "permissions[0].header"),
        (
            {"any": True},
            {"or_ids": {"ids": [{"not_id": {"header": {"name": "x", "present_match": True}}}]}},
            "principals[0].or_ids.ids[0].not_id.header",
        ),
    ],
)
def test_network_filter_refuses_header_rules_as_envoy(permission, principal, where):
    """Envoy 1.40: `Found header(x) rule,not supported by RBAC network filter`."""
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2
    from google.protobuf import any_pb2, json_format

    from sofamesh._core.stats import Store
    from sofamesh.filters.network.rbac import factory
    from sofamesh.proxy.errors import UnsupportedConfig

    msg = json_format.ParseDict(
        {
            "stat_prefix": "r",
            "rules": {"policies": {"p": {"permissions": [permission], "principals": [principal]}}},
        },
        rbac_pb2.RBAC(),
    )
    a = any_pb2.Any()
    a.Pack(msg)
    with pytest.raises(UnsupportedConfig) as e:
        factory(a, {"stats": Store(), "path": "f"})
    assert str(e.value) == (
        f"f.typed_config.rules.policies['p'].{where}: Found header(x) rule,not supported by "
        "RBAC network filter"
    )
