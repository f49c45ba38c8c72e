"""admin/stats_config.py: Envoy's tag extraction from a bootstrap's stats_tags (Istio's
std::regex patterns), the stats matcher, alt_stat_name and histogram bucket settings."""

from __future__ import annotations

import json

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from sofamesh.admin import stats_format
from sofamesh.admin.stats_config import StatsConfigError, StatsView, from_bootstrap, translate_regex
from sofamesh.config import ConfigError
from sofamesh.config.loader import dict_to_message
from sofamesh.config.validate import validate_bootstrap
from tests.conftest import FIXTURES


def istio_view(name: str = "bootstrap_default.json") -> StatsView:
    data = json.loads((FIXTURES / "istio" / name).read_text())
    b = bootstrap_pb2.Bootstrap()
    json_format.ParseDict({"stats_config": data["stats_config"]}, b)
    return from_bootstrap(b)


def test_posix_classes_are_translated():
    assert translate_regex(r"[_.[:digit:]\w]") == r"[_.0-9\w]"
    with pytest.raises(StatsConfigError, match=r"\[:nope:\]"):
        translate_regex("[[:nope:]]")


@pytest.mark.parametrize(
    ("name", "base", "tags"),
    [
        (
            "cluster.xds-grpc;.upstream_rq_200",
            "cluster.upstream_rq",
            [("cluster_name", "xds-grpc"), ("response_code", "200")],
        ),
        (
            "cluster.outbound|80||a.b.svc;.upstream_rq_2xx",
            "cluster.upstream_rq",
            [("cluster_name", "outbound|80||a.b.svc"), ("response_code_class", "2xx")],
        ),
        # no ';': Istio's regex does not match, and Envoy's defaults are off
        ("cluster.plain.upstream_rq_total", "cluster.plain.upstream_rq_total", []),
        (
            "listener.10.0.0.1_80.downstream_cx_total",
            "listener.downstream_cx_total",
            [("listener_address", "10.0.0.1_80")],
        ),
        ("server.worker_0.watchdog_miss", "server.watchdog_miss", [("thread_name", "worker_0")]),
        (
            "http.inbound_0.0.0.0_80;.rbac.allowed",
            "http.rbac",
            [
                ("authz_enforce_result", "allowed"),
                ("http_conn_manager_prefix", "inbound_0.0.0.0_80"),
            ],
        ),
    ],
)
def test_istio_tag_extraction(name, base, tags):
    v = istio_view()
    assert stats_format.extract_tags(name, v.extractors, v.fixed) == (base, tags)


def test_default_extractors_unchanged_without_stats_config():
    v = StatsView()
    assert stats_format.extract_tags("cluster.a.upstream_rq_200", v.extractors, v.fixed) == (
        stats_format.extract_tags("cluster.a.upstream_rq_200")
    )


def test_inclusion_list_and_alt_stat_name():
    v = istio_view()
    snap = {
        "counters": {
            "cluster.xds-grpc.upstream_rq_total": 3,
            "cluster.other.upstream_rq_total": 1,
            "server.live": 1,
            "http.x.downstream_rq_total": 5,
            "http.x.rbac.denied": 1,
            "vhost.v.route.r.upstream_rq_total": 1,
        },
        "gauges": {},
        "histograms": {},
        "used": {"cluster.xds-grpc.upstream_rq_total", "http.x.downstream_rq_total"},
    }
    out = v.apply(snap, {"xds-grpc": "xds-grpc;", "other": ""})
    assert sorted(out["counters"]) == [
        "cluster.xds-grpc;.upstream_rq_total",
        "http.x.rbac.denied",
        "server.live",
        "vhost.v.route.r.upstream_rq_total",
    ]
    assert out["used"] == {"cluster.xds-grpc;.upstream_rq_total"}


def _bootstrap(stats_config: dict) -> bootstrap_pb2.Bootstrap:
    return dict_to_message({"stats_config": stats_config}, bootstrap_pb2.Bootstrap())


def test_fixed_value_tags_and_defaults_kept():
    b = _bootstrap({"stats_tags": [{"tag_name": "mesh", "fixed_value": "m1"}]})
    v = from_bootstrap(b)
    _, tags = stats_format.extract_tags("cluster.a.upstream_rq_200", v.extractors, v.fixed)
    assert tags[0] == ("mesh", "m1")
    assert ("envoy.cluster_name", "a") in tags


def test_reject_all_and_exclusion_list():
    snap = {"counters": {"a.b": 1, "c.d": 1}, "gauges": {}, "histograms": {}, "used": set()}
    v = from_bootstrap(_bootstrap({"stats_matcher": {"reject_all": True}}))
    assert v.apply(dict(snap), {})["counters"] == {}
    v = from_bootstrap(
        _bootstrap({"stats_matcher": {"exclusion_list": {"patterns": [{"prefix": "a."}]}}})
    )
    assert v.apply(dict(snap), {})["counters"] == {"c.d": 1}


def test_bucket_bounds_outside_the_defaults_are_refused():
    b = _bootstrap(
        {"histogram_bucket_settings": [{"match": {"prefix": "cluster"}, "buckets": [1, 7]}]}
    )
    with pytest.raises(ConfigError) as e:
        validate_bootstrap(b)
    assert "histogram_bucket_settings[0].buckets [1.0, 7.0]" in str(e.value)
    assert "not implemented by sofamesh" in str(e.value)


def test_bad_tag_regex_is_refused():
    b = _bootstrap({"stats_tags": [{"tag_name": "t", "regex": "(unclosed"}]})
    with pytest.raises(ConfigError, match="invalid stats_config"):
        validate_bootstrap(b)


def test_istio_bootstraps_stats_config_validates():
    for name in ("bootstrap_default.json", "bootstrap_stats_inclusion.json"):
        v = istio_view(name)
        assert v.keep is not None and v.extractors
