"""proxy/upstream_bind.py: what a BindConfig becomes (the bound sockets themselves are proven
against Envoy in tests/integration/proxy/test_upstream_bind.py)."""

from __future__ import annotations

import socket

import pytest
from envoy.config.core.v3 import address_pb2

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.upstream_bind import IP_FREEBIND, UpstreamBind, keepalive


def _bc(source: str, *extra: str, freebind: bool | None = None) -> address_pb2.BindConfig:
    bc = address_pb2.BindConfig()
    bc.source_address.address = source
    for e in extra:
        bc.extra_source_addresses.add().address.address = e
    if freebind is not None:
        bc.freebind.value = freebind
    return bc


def test_freebind_is_set_on_the_socket_and_the_source_bound():
    b = UpstreamBind.parse(_bc("127.0.0.6", freebind=True), "c")
    s = b.socket_for("127.0.0.1")
    try:
        assert s.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) == 1
        assert s.getsockname()[0] == "127.0.0.6"
        assert not s.getblocking()
    finally:
        s.close()
    plain = UpstreamBind.parse(_bc("127.0.0.6"), "c").socket_for("127.0.0.1")
    try:
        assert plain.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) == 0
    finally:
        plain.close()


def test_the_source_of_the_upstreams_family():
    b = UpstreamBind.parse(_bc("::1", "127.0.0.9"), "c")
    assert b.source_for("10.1.2.3")[0] == "127.0.0.9"
    assert b.source_for("fd00::1")[0] == "::1"
    assert b.source_for("a-hostname")[0] == "::1"  # not an address: source_address
    only4 = UpstreamBind.parse(_bc("127.0.0.6"), "c")
    assert only4.source_for("fd00::1")[0] == "127.0.0.6"  # Envoy: the connect then fails


@pytest.mark.parametrize(
    ("bc", "words"),
    [
        (_bc("127.0.0.6", "127.0.0.7"), "one address per IP family"),
        (_bc("not-an-ip"), "'not-an-ip' is not an IP address"),
        (address_pb2.BindConfig(), "source_address: required"),
    ],
)
def test_bad_configs_are_refused_with_their_path(bc, words):
    with pytest.raises(UnsupportedConfig) as e:
        UpstreamBind.parse(bc, "static_resources.clusters[0].upstream_bind_config")
    assert "static_resources.clusters[0].upstream_bind_config" in str(e.value)
    assert words in str(e.value)


class _Transport:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def test_keepalive_sets_what_is_given_and_leaves_the_rest_to_the_system():
    with socket.socket() as s, socket.socket() as d:
        defaults = [
            d.getsockopt(socket.IPPROTO_TCP, o)
            for o in (socket.TCP_KEEPCNT, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL)
        ]
        keepalive(_Transport(s), (4, None, 3))
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == defaults[1]
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        with pytest.raises(OSError):  # what the kernel refuses fails the connection
            keepalive(_Transport(s), (None, 0, None))
