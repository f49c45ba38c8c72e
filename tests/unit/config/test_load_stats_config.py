"""cluster_manager.load_stats_config: what the LRS client does not implement is refused by
path (proxy/load_stats.check_config, run by --mode validate and at start)."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.load_stats import check_config

CLUSTER = {
    "name": "lrs",
    "type": "STATIC",
    "load_assignment": {
        "cluster_name": "lrs",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}
                        }
                    }
                ]
            }
        ],
    },
}


def _boot(lsc: dict) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(
        {
            "static_resources": {"clusters": [CLUSTER]},
            "cluster_manager": {"load_stats_config": lsc},
        },
        bootstrap_pb2.Bootstrap(),
    )


def test_grpc_to_a_static_cluster_is_accepted():
    lsc = {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]}
    assert check_config(_boot(lsc)) == "127.0.0.1:9"


@pytest.mark.parametrize(
    ("lsc", "where"),
    [
        (
            {"api_type": "DELTA_GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "lrs"}}]},
            "load_stats_config.api_type",
        ),
        (
            {"api_type": "GRPC", "grpc_services": [{"google_grpc": {"target_uri": "x:1"}}]},
            "load_stats_config.grpc_services",
        ),
        (
            {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "nope"}}]},
            "load_stats_config.grpc_services[0].envoy_grpc.cluster_name",
        ),
    ],
)
def test_unimplemented_refused_by_path(lsc, where):
    with pytest.raises(UnsupportedConfig) as e:
        check_config(_boot(lsc))
    assert where in str(e.value)
