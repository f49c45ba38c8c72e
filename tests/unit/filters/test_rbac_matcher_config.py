"""RBAC's matcher form: what is not implemented is refused by path when the filter is
built (matcher trees, nested matchers, keep_matching, inputs other than request headers),
and the network RBAC filter still refuses matchers."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401  (Any types in the matchers)
from google.protobuf import json_format

from sofamesh.filters.http.rbac import compile_rbac
from sofamesh.proxy.errors import UnsupportedConfig

ACTION = {
    "action": {
        "name": "a",
        "typed_config": {"@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "x"},
    }
}
HEADER_INPUT = {
    "name": "h",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        "header_name": "x-a",
    },
}


def _msg(matcher: dict) -> rbac_pb2.RBAC:
    return json_format.ParseDict({"matcher": matcher}, rbac_pb2.RBAC())


@pytest.mark.parametrize(
    ("matcher", "where"),
    [
        (
            {"matcher_tree": {"input": HEADER_INPUT, "exact_match_map": {"map": {"a": ACTION}}}},
            "p.matcher.matcher_tree",
        ),
        (
            {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "ip",
                                        "typed_config": {
                                            "@type": "type.googleapis.com/envoy.extensions."
                                            "matching.common_inputs.network.v3.SourceIPInput"
                                        },
                                    },
                                    "value_match": {"exact": "1.2.3.4"},
                                }
                            },
                            "on_match": ACTION,
                        }
                    ]
                }
            },
            "p.matcher.matcher_list.matchers[0].predicate.single_predicate.input",
        ),
        (
            {"on_no_match": {"matcher": {"on_no_match": ACTION}}},
            "p.matcher.on_no_match.matcher",
        ),
        ({"on_no_match": {**ACTION, "keep_matching": True}}, "p.matcher.on_no_match.keep_matching"),
    ],
)
def test_unimplemented_matcher_parts_refused_by_path(matcher, where):
    with pytest.raises(UnsupportedConfig, match="not implemented by sofamesh") as e:
        compile_rbac(_msg(matcher), "p", matchers=True)
    assert where in str(e.value)


def test_network_filter_refuses_matchers():
    msg = json_format.ParseDict({"matcher": {"on_no_match": ACTION}}, net_rbac_pb2.RBAC())
    with pytest.raises(UnsupportedConfig, match=r"p\.matcher: RBAC matchers"):
        compile_rbac(msg, "p")


def test_engine_names_and_default():
    pol = compile_rbac(_msg({"on_no_match": ACTION}), "p", matchers=True)
    assert pol.engine.names == ("x",)
    assert pol.shadow is None
