"""`--mode validate` on small configs, judged by real Envoy 1.40 and by sofamesh: same
verdict, and sofamesh names the same reason (Envoy's key words) with the field path."""

from __future__ import annotations

import subprocess

import pytest

from sofamesh.proxy import cli
from tests.conftest import envoy_binary

pytestmark = pytest.mark.envoy

EP = (
    "{load_assignment: {cluster_name: a, endpoints: [{lb_endpoints: [{endpoint: {address: "
    "{socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]}}"
)
HCM = """
static_resources:
  clusters: [{name: backend, connect_timeout: 1s}]
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          codec_type: auto
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: %s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

ROUTER = """          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""
CORS = """          - name: envoy.filters.http.cors
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
"""
NET_RL = """static_resources:
  clusters: [{name: c}]
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: rl
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: x
          token_bucket: {max_tokens: 1, fill_interval: 1s}
"""

# (id, config, extra flags, sofamesh must say (substrings), field path sofamesh must name)
CASES = [
    (
        "accepted-lowercase-enums",
        (
            "static_resources: {clusters: [{name: a, lb_policy: round_robin, type: static, "
            "connect_timeout: 1s}]}"
        ),
        [],
        [],
        "",
    ),
    ("accepted-hcm", HCM % "backend", [], [], ""),
    (
        "unknown-route-cluster",
        HCM % "nope",
        [],
        ["route: unknown cluster 'nope'"],
        (
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
            ".virtual_hosts[0].routes[0].route.cluster"
        ),
    ),
    (
        "empty-cluster-name",
        'static_resources: {clusters: [{name: "", connect_timeout: 1s}]}',
        [],
        ["value length must be at least 1 characters"],
        "static_resources.clusters[0].name",
    ),
    (
        "zero-connect-timeout",
        "static_resources: {clusters: [{name: a, connect_timeout: 0s}]}",
        [],
        ["value must be greater than 0s"],
        "static_resources.clusters[0].connect_timeout",
    ),
    (
        "unknown-field",
        "static_resources: {clusters: [{name: a, bogus: 1}]}",
        [],
        ["bogus"],
        "static_resources.clusters[0].bogus",
    ),
    (
        "unknown-field-allowed",
        "static_resources: {clusters: [{name: a, bogus: 1}]}",
        ["--allow-unknown-static-fields"],
        [],
        "",
    ),
    (
        "unknown-enum",
        "static_resources: {clusters: [{name: a, lb_policy: NOPE}]}",
        [],
        ["NOPE"],
        "",
    ),
    (
        "duplicate-cluster",
        "static_resources: {clusters: [{name: a}, {name: a}]}",
        [],
        ["duplicate cluster 'a'"],
        "static_resources.clusters[1].name",
    ),
    (
        "unknown-type",
        (
            "static_resources: {clusters: [{name: a, typed_extension_protocol_options: "
            "{x: {'@type': type.googleapis.com/no.such.Type}}}]}"
        ),
        [],
        ["could not find @type 'type.googleapis.com/no.such.Type'"],
        "static_resources.clusters[0].typed_extension_protocol_options['x']",
    ),
    ("bad-yaml", "static_resources: [", [], ["YAML"], ""),
    (
        "listener-without-address",
        "static_resources: {listeners: [{name: l}]}",
        [],
        ["address is necessary"],
        "static_resources.listeners[0].address",
    ),
    (
        "port-out-of-range",
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 70000}}}",
        [],
        ["value must be less than or equal to 65535"],
        "admin.address.socket_address.port_value",
    ),
    (
        "missing-file",
        (
            "static_resources: {clusters: [{name: a, transport_socket: {name: tls, typed_config: "
            "{'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext, common_tls_context: {validation_context: {trusted_ca: "
            "{filename: /nonexistent/ca.pem}}}}}}]}"
        ),
        [],
        ["Invalid path: /nonexistent/ca.pem"],
        "trusted_ca.filename",
    ),
    (
        "config-yaml-merge-rejects",
        "static_resources: {clusters: [{name: a}]}",
        ["--config-yaml", "static_resources: {clusters: [{name: a}]}"],
        ["duplicate cluster 'a'"],
        "",
    ),
    (
        "config-yaml-merge-accepts",
        "node: {id: x}",
        ["--config-yaml", "static_resources: {clusters: [{name: b, connect_timeout: 2s}]}"],
        [],
        "",
    ),
    (
        "duplicate-listener-address",
        "static_resources: {clusters: [{name: c}], listeners: ["
        + ", ".join(
            f"{{name: {n}, address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}}}"
            for n in "ab"
        )
        + "]}",
        [],
        ["'b' has duplicate address '127.0.0.1:10000' as existing listener"],
        "static_resources.listeners[1].address",
    ),
    (
        "duplicate-domain",
        (HCM % "backend").replace('domains: ["*"]', 'domains: ["a", "a"]'),
        [],
        ["Only unique values for domains are permitted. Duplicate entry of domain a"],
        "route_config.virtual_hosts[0].domains[1]",
    ),
    (
        "router-not-last",
        (HCM % "backend").replace(
            "          http_filters:\n",
            "          http_filters:\n          - name: envoy.filters.http.router\n"
            "            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters"
            ".http.router.v3.Router}\n",
        ),
        [],
        [
            (
                "terminal filter named envoy.filters.http.router of type envoy.filters.http.router "
                "must be the last filter"
            )
        ],
        "typed_config.http_filters[0]",
    ),
    (
        "static-cluster-hostname",
        (
            "static_resources: {clusters: [{name: a, type: STATIC, load_assignment: {cluster_name: "
            "a, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "
            "foo.local, port_value: 1}}}}]}]}}]}"
        ),
        [],
        ["malformed IP address: foo.local"],
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]",
    ),
    (
        "regex-lookahead",
        (HCM % "backend").replace('match: {prefix: "/"}', 'match: {safe_regex: {regex: "(?=a)b"}}'),
        [],
        ["invalid perl operator: (?="],
        "routes[0].match.safe_regex.regex",
    ),
    (
        "regex-backreference",
        (HCM % "backend").replace(
            'match: {prefix: "/"}', r'match: {safe_regex: {regex: "(a)\\1"}}'
        ),
        [],
        ["invalid escape sequence: \\1"],
        "routes[0].match.safe_regex.regex",
    ),
    (
        "regex-unbalanced",
        (HCM % "backend").replace('match: {prefix: "/"}', 'match: {safe_regex: {regex: "a(b"}}'),
        [],
        ["a(b"],
        "routes[0].match.safe_regex.regex",
    ),
    (
        "regex-ok",
        (HCM % "backend").replace(
            'match: {prefix: "/"}', r'match: {safe_regex: {regex: "/a[0-9]+\\.b"}}'
        ),
        [],
        [],
        "",
    ),
    (
        "weights-sum-zero",
        (HCM % "backend").replace(
            "route: {cluster: backend}",
            "route: {weighted_clusters: {clusters: [{name: backend, weight: 0}]}}",
        ),
        [],
        ["Sum of weights in the weighted_cluster must be greater than 0."],
        "route.weighted_clusters",
    ),
    (
        "listener-without-filter-chains",
        (
            "static_resources: {listeners: [{name: l, address: {socket_address: {address: "
            "127.0.0.1, port_value: 10000}}}]}"
        ),
        [],
        ["error adding listener '127.0.0.1:10000': no filter chains specified"],
        "static_resources.listeners[0].filter_chains",
    ),
    (
        "http-chain-ends-non-terminal",
        (HCM % "backend").replace(ROUTER, CORS),
        [],
        [
            (
                "Error: non-terminal filter named envoy.filters.http.cors of type "
                "envoy.filters.http.cors is the last filter in a http filter chain."
            )
        ],
        "typed_config.http_filters[0]",
    ),
    (
        "network-chain-ends-non-terminal",
        NET_RL,
        [],
        [
            (
                "Error: non-terminal filter named rl of type envoy.filters.network.local_ratelimit is "
                "the last filter in a network filter chain."
            )
        ],
        "static_resources.listeners[0].filter_chains[0].filters[0]",
    ),
    (
        "listener-hostname",
        (
            "static_resources: {listeners: [{name: l, address: {socket_address: {address: "
            "localhost, port_value: 10000}}, filter_chains: [{filters: [{name: t, typed_config: "
            "{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, "
            "stat_prefix: s, cluster: c}}]}]}]}"
        ),
        [],
        ["malformed IP address: localhost"],
        "static_resources.listeners[0].address.socket_address.address",
    ),
    (
        "admin-hostname",
        "admin: {address: {socket_address: {address: localhost, port_value: 0}}}",
        [],
        ["malformed IP address: localhost"],
        "admin.address.socket_address.address",
    ),
    (
        "ads-without-node",
        (
            "dynamic_resources: {ads_config: {api_type: GRPC, transport_api_version: V3, "
            "grpc_services: [{envoy_grpc: {cluster_name: xds}}]}, cds_config: {ads: {}, "
            "resource_api_version: V3}}\nstatic_resources: {clusters: [{name: xds, "
            "type: STATIC, load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: "
            "[{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}}]}"
        ),
        [],
        ["ads: node 'id' and 'cluster' are required"],
        "node",
    ),
    (
        "tls-bad-inline-key",
        (
            "static_resources: {clusters: [{name: a, transport_socket: {name: tls, typed_config: "
            "{'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext, common_tls_context: {tls_certificates: [{certificate_chain: "
            "{inline_string: 'nope'}, private_key: {inline_string: 'nope'}}]}}}}]}"
        ),
        [],
        ["Failed to load certificate chain from <inline>"],
        "tls_certificates[0].certificate_chain",
    ),
    (
        "tls-server-without-certificates",
        (
            "static_resources: {listeners: [{name: l, address: {socket_address: {address: "
            "127.0.0.1, port_value: 10000}}, filter_chains: [{transport_socket: {name: tls, "
            "typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext, common_tls_context: {}}}, filters: [{name: t, typed_config: "
            "{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, "
            "stat_prefix: s, cluster: c}}]}]}], clusters: [{name: c}]}"
        ),
        [],
        ["No TLS certificates found for server context"],
        "transport_socket.typed_config.common_tls_context",
    ),
    (
        "scalar-for-repeated-field",
        (HCM % "backend").replace('domains: ["*"]', 'domains: "*"'),
        [],
        [],
        "",
    ),
    (
        "endpoint-without-port",
        f"static_resources: {{clusters: [{{name: a, {EP[1:-1]}}}]}}".replace(
            ", port_value: 8080", ""
        ),
        [],
        ["value is required"],
        "port_specifier",
    ),
]


def _envoy(path, flags):
    r = subprocess.run(
        check=False,
        args=[
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(path),
            *flags,
            "--disable-hot-restart",
            "-l",
            "critical",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("config", "flags", "says", "field_path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_same_verdict_as_envoy(config, flags, says, field_path, tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(config)
    monkeypatch.chdir(tmp_path)
    erc, eout = _envoy(path, flags)
    rc = cli.main(["--mode", "validate", "-c", str(path), *flags])
    out, err = capsys.readouterr()
    assert rc == erc, (eout, out, err)
    if rc == 0:
        assert f"configuration '{path}' OK" in out
        assert "OK" in eout
        return
    for s in says:
        assert s in err, err
    if field_path:
        assert field_path in err, err
