"""tcp_proxy naming a cluster that does not exist is not a config error, as in Envoy 1.40:
both start, and close each connection counting downstream_cx_no_route. (Over xDS a
listener often arrives while its cluster still warms: refusing it lost the listener.)"""

from __future__ import annotations

import socket

import pytest

from tests.conftest import envoy_binary
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.wait import wait_until

from .conftest import bootstrap, free_port, listener, sofamesh, tcp_filter

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_connection_to_an_unknown_cluster_is_closed_and_counted(tmp_path, kind):
    port = free_port()
    boot = bootstrap([listener("tcp", port, [tcp_filter("nope", "t")])], [])
    proxy = (
        ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
        if kind == "envoy"
        else sofamesh(boot, tmp_path)
    )
    admin = boot["admin"]["address"]["socket_address"]["port_value"]

    def no_route() -> int:
        _, text = admin_get(admin, "/stats?filter=tcp.t.downstream_cx_no_route")
        return int(text.strip().rpartition(": ")[2])

    with proxy:
        # the start-up readiness probe connected once: counted when the proxy's worker has
        # taken that connection, which on a loaded machine can be after start() returned
        before = wait_until(no_route, 10, "the readiness probe's connection counted")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hello")
            try:
                assert s.recv(100) == b""  # closed without an answer
            except ConnectionResetError:
                pass
        wait_until(lambda: no_route() > before, 10, "the connection counted")
        assert no_route() == before + 1
