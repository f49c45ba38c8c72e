"""Bootstrap loading as Envoy does it: formats, lower-case enums, Any types, merge, paths."""

from __future__ import annotations

import json

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import text_format

from sofamesh.config import ConfigError, load_bootstrap, protos, validate_bootstrap

HCM_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
LISTENER = """
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {}
          stat_prefix: x
          codec_type: auto
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters:
          {}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
""".format(HCM_URL, "%s")


def write(tmp_path, text, name="b.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def hcm_of(b):
    return protos.unpack_any(
        b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    )


def test_lowercase_enums_inside_any_are_normalised(tmp_path):
    b = load_bootstrap(write(tmp_path, LISTENER % ""))
    assert hcm_of(b).codec_type == 0  # AUTO
    b = load_bootstrap(
        write(
            tmp_path,
            "static_resources: {clusters: [{name: a, type: strict_dns, lb_policy: least_request}]}",
        )
    )
    c = b.static_resources.clusters[0]
    assert (c.type, c.lb_policy) == (1, 1)


def test_json_with_camel_case_names(tmp_path):
    doc = {
        "staticResources": {
            "clusters": [{"name": "a", "connectTimeout": "0.25s", "lbPolicy": "random"}]
        }
    }
    b = load_bootstrap(write(tmp_path, json.dumps(doc), "b.json"))
    c = b.static_resources.clusters[0]
    assert c.connect_timeout.ToMilliseconds() == 250 and c.lb_policy == 3


def test_binary_and_text_proto(tmp_path):
    b = bootstrap_pb2.Bootstrap()
    b.node.id = "n"
    b.static_resources.clusters.add(name="a").connect_timeout.seconds = 1
    (tmp_path / "b.pb").write_bytes(b.SerializeToString())
    (tmp_path / "b.pb_text").write_text(text_format.MessageToString(b))
    assert load_bootstrap(tmp_path / "b.pb") == b
    assert load_bootstrap(tmp_path / "b.pb_text") == b


def test_config_yaml_merges_like_proto_merge_from(tmp_path):
    p = write(
        tmp_path,
        "node: {id: file, cluster: c}\n"
        "static_resources: {clusters: [{name: a, connect_timeout: 1s}]}",
    )
    b = load_bootstrap(p, config_yaml="node: {id: flag}\nstatic_resources: {clusters: [{name: b}]}")
    assert b.node.id == "flag" and b.node.cluster == "c"  # scalars replaced, rest kept
    assert [c.name for c in b.static_resources.clusters] == ["a", "b"]  # repeated appended
    only = load_bootstrap(None, config_yaml="node: {id: only}")
    assert only.node.id == "only"
    with pytest.raises(ConfigError, match="At least one of --config-path or --config-yaml"):
        load_bootstrap(None)


def test_unknown_field_names_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_bootstrap(
            write(
                tmp_path,
                LISTENER.replace("stat_prefix: x", "stat_prefix: x\n          no_such: 1") % "",
            )
        )
    p = e.value.problems[0]
    assert p.path == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.no_such"
    )
    assert "HttpConnectionManager" in p.message
    b = load_bootstrap(
        write(tmp_path, "static_resources: {clusters: [{name: a, x: 1}]}"),
        allow_unknown_fields=True,
    )
    assert b.static_resources.clusters[0].name == "a"


def test_unknown_type_names_its_path(tmp_path):
    bad = LISTENER % (
        "- name: f\n            typed_config: {'@type': type.googleapis.com/acme.Filter}"
    )
    with pytest.raises(ConfigError) as e:
        load_bootstrap(write(tmp_path, bad))
    p = e.value.problems[0]
    assert p.kind == "unknown_type"
    assert p.path.endswith(".typed_config.http_filters[0].typed_config")
    assert "could not find @type 'type.googleapis.com/acme.Filter'" in p.message


def test_istio_filters_pass_through(tmp_path):
    istio = (
        "- name: istio.metadata_exchange\n"
        "            typed_config: {'@type': type.googleapis.com/io.istio.http"
        ".peer_metadata.Config, upstream_discovery: [{istio_headers: {}}]}\n"
        "          - name: istio.stats\n"
        "            typed_config: {'@type': type.googleapis.com/udpa.type.v1.TypedStruct,"
        " type_url: type.googleapis.com/stats.PluginConfig, value: {disable_host_header_fallback: true}}"
    )
    b = load_bootstrap(write(tmp_path, LISTENER % istio), validate=False)
    hf = hcm_of(b).http_filters[0]
    assert hf.typed_config.type_url == "type.googleapis.com/xds.type.v3.TypedStruct"
    report = validate_bootstrap(b)
    assert [name for _, name in report.passthrough] == [
        "istio.metadata_exchange (io.istio.http.peer_metadata.Config)",
        "istio.stats (stats.PluginConfig)",
    ]


def test_unimplemented_filter_is_an_error_naming_it(tmp_path):
    f = (
        "- name: envoy.filters.http.buffer\n"
        "            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http"
        ".buffer.v3.Buffer, max_request_bytes: 1024}"
    )
    with pytest.raises(ConfigError) as e:
        load_bootstrap(write(tmp_path, LISTENER % f))
    assert e.value.unsupported_only
    (p,) = e.value.problems
    assert p.path == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        ".http_filters[0].typed_config"
    )
    assert p.message == (
        "http filter type.googleapis.com/envoy.extensions.filters.http.buffer"
        ".v3.Buffer is not implemented by sofamesh"
    )


def test_unimplemented_core_field_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_bootstrap(
            write(
                tmp_path,
                "static_resources: {clusters: [{name: a, type: EDS, "
                "eds_cluster_config: {eds_config: {ads: {}}}}]}",
            )
        )
    # EDS clusters are implemented over ADS; without an ads_config Envoy skips the cluster
    # with a warning, sofamesh refuses it
    assert [str(p) for p in e.value.problems] == [
        (
            "static_resources.clusters[0].eds_cluster_config.eds_config.ads: ADS must be "
            "configured to support an ADS config source (dynamic_resources.ads_config)"
        )
    ]
    assert e.value.unsupported_only
    with pytest.raises(ConfigError) as e:
        load_bootstrap(
            write(tmp_path, "static_resources: {clusters: [{name: a, cluster_type: {name: x}}]}")
        )
    assert [str(p) for p in e.value.problems] == [
        (
            "static_resources.clusters[0].cluster_type: custom cluster types are not "
            "implemented by sofamesh"
        )
    ]


def test_yaml_details(tmp_path):
    b = load_bootstrap(
        write(
            tmp_path,
            "node: {id: 2024-01-01, metadata: {when: 2024-01-01}}\n"
            "ignored_anchor: !ignore &a {x: 1}\n",
        ),
        validate=False,
    )
    assert b.node.id == "2024-01-01"
    assert b.node.metadata["when"] == "2024-01-01"
    with pytest.raises(ConfigError, match="Unable to parse YAML"):
        load_bootstrap(write(tmp_path, "node: [\n"))
    with pytest.raises(ConfigError, match="Invalid path: .*nope.yaml"):
        load_bootstrap(tmp_path / "nope.yaml")


def test_lua_require_is_resolved_from_the_working_dir(tmp_path, monkeypatch):
    lua = (
        "- name: envoy.filters.http.lua\n"
        "            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters"
        ".http.lua.v3.Lua, default_source_code: {inline_string: \"local m = require('lib.m')\"}}"
    )
    p = write(tmp_path, LISTENER % lua)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_bootstrap(p)
    kinds = {(pr.kind, pr.message) for pr in e.value.problems}
    assert ("reference", "script load error: module 'lib.m' not found") in kinds
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "m.lua").write_text("return {}")
    with pytest.raises(ConfigError) as e:
        load_bootstrap(p)
    assert e.value.unsupported_only  # the file is there; Lua itself is not implemented


def test_types_load_lazily_by_package(tmp_path):
    """A fresh process resolves the bootstrap's Any types by importing only their packages;
    the full import of every API module happens only for a type it cannot place."""
    import subprocess
    import sys

    p = write(tmp_path, LISTENER % "")
    code = (
        "import sys\n"
        "from sofamesh.config import load_bootstrap, protos\n"
        f"b = load_bootstrap({str(p)!r})\n"
        "assert not protos._imported, 'full import not needed'\n"
        "assert protos.find_descriptor('type.googleapis.com/envoy.extensions.filters.http"
        ".lua.v3.Lua') is not None\n"
        "assert not protos._imported\n"
        "assert protos.find_descriptor('type.googleapis.com/no.such.Type') is None\n"
        "assert protos._imported\n"
        "print('ok')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.stdout.strip() == "ok", r.stderr


def test_bad_values_name_their_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_bootstrap(
            write(tmp_path, "static_resources: {clusters: [{name: a, connect_timeout: abc}]}")
        )
    (p,) = e.value.problems
    assert p.path == "static_resources.clusters[0].connect_timeout"
    assert 'Duration must end with letter "s": abc' in p.message


def test_static_runtime_is_accepted_with_a_warning(tmp_path):
    b = load_bootstrap(
        write(
            tmp_path,
            "layered_runtime: {layers: [{name: s, static_layer: "
            "{overload: {global_downstream_max_connections: 10}}}, "
            "{name: a, admin_layer: {}}]}",
        ),
        validate=False,
    )
    report = validate_bootstrap(b)
    assert report.warnings == [
        (
            "layered_runtime.layers[0].static_layer: runtime values are served by /runtime but "
            "sofamesh acts on none of them (overload)"
        )
    ]
    with pytest.raises(ConfigError) as e:
        load_bootstrap(
            write(
                tmp_path,
                "layered_runtime: {layers: [{name: d, disk_layer: "
                f"{{symlink_root: '{tmp_path}/current'}}}}]}}",
            )
        )
    assert [str(p) for p in e.value.problems] == [
        "layered_runtime.layers[0].disk_layer: disk runtime layer is not implemented by sofamesh"
    ]


def test_optional_unknown_filter_is_skipped_with_a_warning(tmp_path):
    f = (
        "- name: envoy.filters.http.buffer\n"
        "            is_optional: true\n"
        "            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http"
        ".buffer.v3.Buffer, max_request_bytes: 1024}"
    )
    b = load_bootstrap(write(tmp_path, LISTENER % f), validate=False)
    report = validate_bootstrap(b)
    assert report.warnings == [
        (
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]:"
            " optional http filter type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
            " is not implemented by sofamesh; skipped"
        )
    ]


def test_self_referencing_yaml_alias_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="an alias refers to itself"):
        load_bootstrap(write(tmp_path, "node: {metadata: {a: &x [*x]}}"))
    # an alias used twice (no cycle) is fine
    b = load_bootstrap(write(tmp_path, "node: {id: &i n1, cluster: *i}"))
    assert b.node.cluster == "n1"
