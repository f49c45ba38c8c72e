"""grpcio's own xDS client (`xds:///` target, GRPC_XDS_BOOTSTRAP) resolves a service through the
pilot (LDS api_listener -> RDS -> CDS -> EDS) and calls a real gRPC server registered as an instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest

CLIENT = r"""
import sys, grpc
target = sys.argv[1]
with grpc.insecure_channel(target) as ch:
    call = ch.unary_unary("/sofamesh.test.Echo/Say", request_serializer=None, response_deserializer=None)
    for i in range(int(sys.argv[2])):
        print(call(b"ping-%d" % i, timeout=20, wait_for_ready=True).decode(), flush=True)
"""


def _echo_server(name: str) -> tuple[grpc.Server, int]:
    def say(request: bytes, context) -> bytes:
        return f"{name}:{request.decode()}".encode()

    handler = grpc.method_handlers_generic_handler(
        "sofamesh.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _run_client(pilot, tmp_path, target: str, n: int) -> list[str]:
    boot = tmp_path / "xds-bootstrap.json"
    boot.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": f"127.0.0.1:{pilot.xds_port}",
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {
                    "id": "sidecar~127.0.0.1~client.ns~ns.svc.cluster.local",
                    "cluster": "client",
                },
            }
        )
    )
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(boot))
    r = subprocess.run(
        [sys.executable, "-c", CLIENT, target, str(n)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()


def test_grpc_xds_client_calls_registered_server(pilot, tmp_path):
    a, pa = _echo_server("a")
    b, pb = _echo_server("b")
    try:
        pilot.register(
            "greeter",
            "g-a",
            address="127.0.0.1",
            port=pa,
            protocol="grpc",
            service_port=50051,
            ttl_seconds=60,
            locality={"region": "r1", "zone": "z1"},
        )
        pilot.register(
            "greeter",
            "g-b",
            address="127.0.0.1",
            port=pb,
            protocol="grpc",
            service_port=50051,
            ttl_seconds=60,
            locality={"region": "r1", "zone": "z2"},
        )
        out = _run_client(pilot, tmp_path, "xds:///greeter:50051", 20)
        assert len(out) == 20
        assert all(line.endswith(f":ping-{i}") for i, line in enumerate(out))
        # both registered servers answered: gRPC balanced across the pilot's endpoints
        assert {line.split(":")[0] for line in out} == {"a", "b"}
        # the bare service name resolves too
        eds = pilot.config("eds")["outbound|50051||greeter"]
        pilot.deregister("greeter", "g-b")
        pilot.wait_config("eds", lambda c: c["outbound|50051||greeter"] != eds)
        out = _run_client(pilot, tmp_path, "xds:///greeter", 3)
        assert out == ["a:ping-0", "a:ping-1", "a:ping-2"]
    finally:
        a.stop(0)
        b.stop(0)


@pytest.mark.envoy
def test_grpc_through_envoy_sidecar(pilot, tmp_path):
    """The same service reached through a real Envoy on the pilot's config: the gRPC port's
    cluster speaks HTTP/2 upstream and the route carries no request timeout."""
    from tests.conftest import envoy_binary, free_port
    from tests.integration.pilot.conftest import ads_bootstrap
    from tests.support.envoy import ProxyProcess

    a, pa = _echo_server("a")
    admin = free_port()
    envoy = ProxyProcess.envoy(
        envoy_binary(), ads_bootstrap(pilot.xds_port, admin, delta=True), tmp_path / "envoy"
    )
    try:
        envoy.start()
        pilot.register(
            "greeter", "g-a", address="127.0.0.1", port=pa, protocol="grpc", service_port=50051
        )
        opts = [("grpc.default_authority", "greeter:50051")]
        deadline = time.monotonic() + 10
        with grpc.insecure_channel(f"127.0.0.1:{pilot.outbound_port}", options=opts) as ch:
            call = ch.unary_unary("/sofamesh.test.Echo/Say")
            while True:
                try:
                    assert call(b"via-envoy", timeout=2) == b"a:via-envoy"
                    break
                except grpc.RpcError as e:
                    assert time.monotonic() < deadline, (
                        f"{e.code()} {e.details()}\n{envoy.log_text()}"
                    )
                    time.sleep(0.1)
    finally:
        envoy.stop()
        a.stop(0)
