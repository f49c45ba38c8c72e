"""The per-message allow-lists of config/support.py (issue 2: nothing silently ignored):
they name real fields, and validation applies them, including the accepted-without-effect
fields and the value-restricted ones."""

from __future__ import annotations

import pytest

from sofamesh.config import ConfigError, load_bootstrap, protos, support


def _descriptor(full_name: str):
    return protos.find_descriptor("type.googleapis.com/" + full_name)


@pytest.mark.parametrize("message", sorted(support.SUPPORTED_FIELDS))
def test_allow_list_names_real_fields(message):
    d = _descriptor(message)
    assert d is not None, message
    listed = (
        set(support.IMPLEMENTED[message])
        | set(support.NO_EFFECT.get(message, {}))
        | {f for m, f in support.ALLOWED_IF if m == message}
    )
    missing = sorted(f for f in listed if f not in d.fields_by_name)
    assert not missing, f"{message}: no such fields {missing}"
    # a value-restricted field must be allowed in the first place
    for m, f in support.ALLOWED_IF:
        if m == message:
            assert f in support.IMPLEMENTED[message]


def test_no_effect_fields_carry_a_reason():
    for message, fields in support.NO_EFFECT.items():
        assert message in support.IMPLEMENTED, message
        for field, reason in fields.items():
            assert len(reason) > 20, (message, field)
            assert field not in support.IMPLEMENTED[message], (message, field)


def _cfg(tmp_path, text: str):
    p = tmp_path / "b.yaml"
    p.write_text(text)
    return load_bootstrap(str(p))


CLUSTER = """
static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}
"""


def test_unimplemented_cluster_field_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, CLUSTER.format(extra="    dns_jitter: 1s"))
    assert [str(p) for p in e.value.problems] == [
        (
            "static_resources.clusters[0].dns_jitter: Cluster.dns_jitter is not implemented by sofamesh"
        )
    ]
    assert e.value.unsupported_only


def test_no_effect_field_is_accepted(tmp_path):
    _cfg(tmp_path, CLUSTER.format(extra="    metadata: {filter_metadata: {a: {b: 1}}}"))
    _cfg(tmp_path, CLUSTER.format(extra="    ring_hash_lb_config: {minimum_ring_size: 1024}"))


def test_value_restricted_field(tmp_path):
    _cfg(tmp_path, CLUSTER.format(extra="    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY"))
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, CLUSTER.format(extra="    type: STRICT_DNS\n    dns_lookup_family: ALL"))
    assert [str(p) for p in e.value.problems] == [
        (
            "static_resources.clusters[0].dns_lookup_family: Cluster.dns_lookup_family ALL is not "
            "implemented by sofamesh: only V4_ONLY (the resolver asks for IPv4 addresses)"
        )
    ]


def test_one_finding_per_refused_subtree(tmp_path):
    """Below a refused field only Envoy's own checks run: an Any inside it is not reported
    again as an unimplemented extension."""
    text = """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    access_log:
    - name: envoy.access_loggers.stdout
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, text)
    assert [str(p) for p in e.value.problems] == [
        (
            "static_resources.listeners[0].access_log: "
            "Listener.access_log is not implemented by sofamesh"
        )
    ]


_H1_OPTIONS = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
{opts}"""


def test_cluster_http1_trailers_option_is_accepted_and_read(tmp_path):
    from sofamesh.proxy.http_options import upstream_trailers as _upstream_trailers

    b = _cfg(
        tmp_path,
        CLUSTER.format(
            extra=_H1_OPTIONS.format(
                opts="        explicit_http_config: {http_protocol_options: {enable_trailers: true}}"
            )
        ),
    )
    assert _upstream_trailers(b.static_resources.clusters[0])
    b = _cfg(
        tmp_path,
        CLUSTER.format(
            extra=_H1_OPTIONS.format(
                opts="        explicit_http_config: {http_protocol_options: {}}"
            )
        ),
    )
    assert not _upstream_trailers(b.static_resources.clusters[0])


@pytest.mark.parametrize(
    ("opts", "refused"),
    [
        (
            "        explicit_http_config: {http2_protocol_options: {allow_metadata: true}}",
            (
                "explicit_http_config.http2_protocol_options.allow_metadata: "
                "Http2ProtocolOptions.allow_metadata is not implemented by sofamesh"
            ),
        ),
        (
            (
                "        common_http_protocol_options: {idle_timeout: 1s, max_headers_count: 9}\n"
                "        explicit_http_config: {http_protocol_options: {}}"
            ),
            (
                "common_http_protocol_options.max_headers_count: "
                "HttpProtocolOptions.max_headers_count is not implemented by sofamesh in "
                "HttpProtocolOptions.common_http_protocol_options"
            ),
        ),
        (
            "        explicit_http_config: {http_protocol_options: {allow_chunked_length: true}}",
            (
                "explicit_http_config.http_protocol_options.allow_chunked_length: "
                "Http1ProtocolOptions.allow_chunked_length is not implemented by sofamesh"
            ),
        ),
    ],
)
def test_cluster_http_options_beyond_http1_trailers_are_refused(tmp_path, opts, refused):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, CLUSTER.format(extra=_H1_OPTIONS.format(opts=opts)))
    prefix = (
        "static_resources.clusters[0].typed_extension_protocol_options"
        "['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']."
    )
    assert [str(p) for p in e.value.problems] == [prefix + refused]


def test_cluster_common_http_protocol_options_read(tmp_path):
    """A cluster's common_http_protocol_options: idle_timeout, max_connection_duration and
    max_requests_per_connection are read (Envoy's hour of idle_timeout when unset)."""
    from sofamesh.proxy.http_options import upstream_common

    opts = (
        "        common_http_protocol_options:\n"
        "          {idle_timeout: 300s, max_connection_duration: 2s, max_requests_per_connection: 2}\n"
        "        use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}"
    )
    b = _cfg(tmp_path, CLUSTER.format(extra=_H1_OPTIONS.format(opts=opts)))
    assert upstream_common(b.static_resources.clusters[0]) == {
        "idle_timeout": 300.0,
        "max_connection_duration": 2.0,
        "max_requests_per_connection": 2,
    }
    b = _cfg(tmp_path, CLUSTER.format(extra="    max_requests_per_connection: 3"))
    assert upstream_common(b.static_resources.clusters[0]) == {
        "idle_timeout": 3600.0,
        "max_requests_per_connection": 3,
    }


def test_cluster_max_requests_set_twice_is_refused_as_envoy(tmp_path):
    opts = (
        "        common_http_protocol_options: {max_requests_per_connection: 2}\n"
        "        explicit_http_config: {http_protocol_options: {}}"
    )
    extra = "    max_requests_per_connection: 3\n" + _H1_OPTIONS.format(opts=opts)
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, CLUSTER.format(extra=extra))
    refused = (
        "static_resources.clusters[0].max_requests_per_connection: Only one of "
        "max_requests_per_connection from Cluster or HttpProtocolOptions can be specified"
    )
    assert [str(p) for p in e.value.problems] == [refused]


def test_hcm_common_options_keep_their_own_list(tmp_path):
    """The HCM's common_http_protocol_options still accepts max_headers_count and refuses
    what only a cluster's accepts."""
    hcm = """
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
          common_http_protocol_options: {{{opts}}}
          route_config: {{}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
    _cfg(tmp_path, hcm.format(opts="idle_timeout: 1s, max_headers_count: 50"))
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, hcm.format(opts="max_connection_duration: 1s"))
    assert str(e.value.problems[0]).endswith(
        "common_http_protocol_options.max_connection_duration: "
        "HttpProtocolOptions.max_connection_duration is not implemented by sofamesh"
    )


def test_hcm_enable_trailers_is_accepted(tmp_path):
    _cfg(
        tmp_path,
        """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          http_protocol_options: {enable_trailers: true}
          route_config: {name: r}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
""",
    )


def test_cds_cluster_with_http1_trailers_or_http2_is_accepted_and_h2_connect_refused():
    """xDS clusters take the same check (validate_resource) and the same build."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    from sofamesh.config.validate import validate_resource
    from sofamesh.proxy.http_options import upstream_trailers as _upstream_trailers

    def cluster(**explicit):
        c = cluster_pb2.Cluster(name="cds", type=cluster_pb2.Cluster.EDS)
        c.eds_cluster_config.eds_config.ads.SetInParent()
        c.connect_timeout.seconds = 1
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        for k, v in explicit.items():
            getattr(opts.explicit_http_config, k).MergeFrom(v)
        c.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].Pack(opts)
        return c

    from envoy.config.core.v3 import protocol_pb2

    ok = cluster(http_protocol_options=protocol_pb2.Http1ProtocolOptions(enable_trailers=True))
    assert validate_resource(ok) == []
    assert _upstream_trailers(ok)
    from sofamesh.proxy.http_options import upstream_h2 as _upstream_h2

    h2 = cluster(http2_protocol_options=protocol_pb2.Http2ProtocolOptions())
    assert validate_resource(h2) == []
    assert _upstream_h2(h2) == (2147483647, 268435456, 268435456, False)
    assert _upstream_h2(ok) is None
    h2c = cluster(http2_protocol_options=protocol_pb2.Http2ProtocolOptions(allow_metadata=True))
    assert [p.path for p in validate_resource(h2c)] == [
        (
            "typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"
            ".explicit_http_config.http2_protocol_options.allow_metadata"
        )
    ]
    assert not _upstream_trailers(h2)
