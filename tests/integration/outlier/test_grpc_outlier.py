"""Outlier detection of gRPC upstreams against Envoy 1.40: a grpcio server whose calls all
end UNAVAILABLE (a trailers-only response, HTTP 200) is ejected after consecutive_5xx of
them, as Envoy's router counts a gRPC response head's grpc-status as its HTTP mapping
(UNAVAILABLE: 503); the same stats in both proxies."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.health.helpers import host_flags
from tests.integration.http2.conftest import CHANNEL_OPTIONS, SERVICE, _cluster, bootstrap
from tests.support.envoy import ProxyProcess


class Server:
    """A grpcio server: Unary echoes, or aborts UNAVAILABLE when `failing`."""

    def __init__(self, failing: bool) -> None:
        self.calls = 0

        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            self.calls += 1
            if failing:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "down")
            return req

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def scenario(kind: str, tmp_path) -> dict:
    good, bad = Server(False), Server(True)
    port, admin = free_port(), free_port()
    od = _cluster("od", good.port, True)
    od["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": bad.port}}
            }
        }
    )
    od["outlier_detection"] = {"consecutive_5xx": 3, "interval": "1s", "max_ejection_percent": 50}
    routes = [{"match": {"prefix": "/" + SERVICE + "/", "grpc": {}}, "route": {"cluster": "od"}}]
    b = bootstrap(port, admin, good.port, free_port(), free_port(), routes=routes, clusters=[od])
    proc = (
        ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind)
    )
    res: dict = {}
    try:
        with proc, grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
            call = ch.unary_unary(f"/{SERVICE}/Unary")
            codes = []
            for _ in range(12):
                try:
                    call(b"x", timeout=5)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
            res["codes"] = sorted(codes)  # (round robin may start on either host)
            res["last_6"] = codes[6:]
            res["bad_calls"] = bad.calls
            res["flags"] = sorted(host_flags(admin, "od").values())
            res["stats"] = {
                k.replace("od.", "", 1): v for k, v in od_stats_for(admin, "od").items()
            }
    finally:
        good.server.stop(0)
        bad.server.stop(0)
    return res


def od_stats_for(admin: int, cluster: str) -> dict:
    from tests.support.envoy import admin_get

    _, text = admin_get(admin, "/stats")
    out = {}
    for line in text.splitlines():
        name, _, v = line.partition(": ")
        if name.startswith(f"cluster.{cluster}.outlier_detection."):
            out[name] = int(v)
    return out


@pytest.mark.envoy
def test_grpc_unavailable_ejects_as_envoy(tmp_path):
    env = scenario("envoy", tmp_path)
    assert env["bad_calls"] == 3 and env["codes"].count("UNAVAILABLE") == 3
    assert env["last_6"] == ["OK"] * 6
    assert env["flags"] == ["/failed_outlier_check", "healthy"]
    sm = scenario("sofamesh", tmp_path)
    assert sm == env
