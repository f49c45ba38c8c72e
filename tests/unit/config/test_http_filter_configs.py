"""CORS, CSRF, compressor, decompressor and the stdout/stderr loggers: what sofamesh does not
implement is refused by name at load time (config validation), the rest loads."""

from __future__ import annotations

import json

import pytest

from sofamesh.config import ConfigError, load_bootstrap

T = "type.googleapis.com/"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}
GZIP = {
    "name": "g",
    "typed_config": {"@type": T + "envoy.extensions.compression.gzip.compressor.v3.Gzip"},
}


def _boot(filters: list, hcm_extra: dict | None = None, route_extra: dict | None = None) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}, **(route_extra or {})}
    hcm = {
        "@type": T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "s",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
        "http_filters": [*filters, ROUTER],
        **(hcm_extra or {}),
    }
    ep = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [ep]}]},
                }
            ],
        }
    }


def _load(tmp_path, boot: dict):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(boot))
    return load_bootstrap(str(p))


def _compressor(**fields) -> dict:
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.compressor.v3.Compressor",
            "compressor_library": GZIP,
            **fields,
        },
    }


def test_implemented_options_load(tmp_path):
    cors_policy = {
        "@type": T + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "http://a"}],
        "allow_methods": "GET",
        "allow_credentials": True,
    }
    _load(
        tmp_path,
        _boot(
            [
                {
                    "name": "envoy.filters.http.cors",
                    "typed_config": {"@type": T + "envoy.extensions.filters.http.cors.v3.Cors"},
                },
                _compressor(
                    response_direction_config={
                        "common_config": {"min_content_length": 10, "content_type": ["text/plain"]},
                        "disable_on_etag_header": True,
                        "uncompressible_response_codes": [206],
                    }
                ),
                {
                    "name": "envoy.filters.http.csrf",
                    "typed_config": {
                        "@type": T + "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
                        "filter_enabled": {"default_value": {"numerator": 100}},
                    },
                },
            ],
            hcm_extra={
                "add_user_agent": True,
                "access_log": [
                    {
                        "name": "envoy.access_loggers.stdout",
                        "typed_config": {
                            "@type": T + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                        },
                    }
                ],
            },
            route_extra={"typed_per_filter_config": {"envoy.filters.http.cors": cors_policy}},
        ),
    )


@pytest.mark.parametrize(
    ("filters", "hcm_extra", "refused"),
    [
        ([_compressor(choose_first=True)], None, "Compressor.choose_first"),
        ([_compressor(content_type=["text/html"])], None, "Compressor.content_type"),
        (
            [_compressor(response_direction_config={"status_header_enabled": True})],
            None,
            "ResponseDirectionConfig.status_header_enabled",
        ),
        ([_compressor(request_direction_config={})], None, "Compressor.request_direction_config"),
        (
            [
                {
                    "name": "envoy.filters.http.compressor",
                    "typed_config": {
                        "@type": T + "envoy.extensions.filters.http.compressor.v3.Compressor",
                        "compressor_library": {
                            "name": "z",
                            "typed_config": {
                                "@type": T + "envoy.extensions.compression.zstd.compressor.v3.Zstd",
                                "dictionary": {"inline_string": "abc"},
                            },
                        },
                    },
                }
            ],
            None,
            "Zstd.dictionary",
        ),
        (
            [],
            {
                "access_log": [
                    {
                        "name": "envoy.access_loggers.stderr",
                        "typed_config": {
                            "@type": T
                            + "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                            "log_format": {"text_format_source": {"inline_string": "%PROTOCOL%\n"}},
                        },
                        "filter": {"metadata_filter": {}},
                    }
                ]
            },
            "AccessLogFilter.metadata_filter",
        ),
    ],
)
def test_unimplemented_options_refused_by_name(tmp_path, filters, hcm_extra, refused):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, _boot(filters, hcm_extra))
    assert refused in str(e.value) and "not implemented by sofamesh" in str(e.value)
