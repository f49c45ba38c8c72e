"""retry_on as Envoy 1.40 reads it: its conditions sofamesh lacks are refused as a gap (never
called invalid), a condition Envoy does not know is ignored (Envoy accepts it), with a warning."""

from __future__ import annotations

import logging

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.routes import compile_route_config


def _rc(retry_on: str) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {
            "virtual_hosts": [
                {
                    "name": "a",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "c", "retry_policy": {"retry_on": retry_on}},
                        }
                    ],
                }
            ]
        },
        route_pb2.RouteConfiguration(),
    )


def test_implemented_conditions_compile():
    compile_route_config(_rc("5xx,gateway-error,connect-failure,reset,refused-stream"))


def test_istio_default_and_the_grpc_conditions_compile():
    """Istio's default retry_on (gRPC conditions included), which Envoy 1.40 accepts."""
    from sofamesh._core import router as R

    compile_route_config(
        _rc("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
    )
    compile_route_config(_rc("cancelled,deadline-exceeded,internal,resource-exhausted"))
    assert R.RETRY_ON["unavailable"] and R.RETRY_ON["resource-exhausted"]


@pytest.mark.parametrize("cond", ["reset-before-request", "envoy-ratelimited", "retriable-headers"])
def test_envoy_conditions_sofamesh_lacks_are_refused_as_not_implemented(cond):
    with pytest.raises(UnsupportedConfig) as e:
        compile_route_config(_rc("connect-failure," + cond))
    assert "is not implemented by sofamesh" in str(e.value)
    assert "retry_policy.retry_on" in str(e.value)


def test_unknown_condition_is_ignored_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="sofamesh.config")
    compile_route_config(_rc("5xx,bogus"))
    assert "unknown condition 'bogus' ignored" in caplog.text
