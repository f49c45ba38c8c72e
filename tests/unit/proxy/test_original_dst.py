"""original_dst (proxy/original_dst.py): the destination a NAT rewrote, restored on the TCP
transport, is also the local address of the TLS transport on top of it (a captured mTLS
connection passed through to an ORIGINAL_DST cluster goes where the caller dialled, not
back to the capture port). Fakes stand in for uvloop's transports: its TLS transport and
socket objects take no weak reference, its TCP transport does."""

from __future__ import annotations

import gc
import socket
import struct

from sofamesh.proxy import original_dst


class _Sock:
    """uvloop's PseudoSocket: no weak reference; SO_ORIGINAL_DST as the NAT set it."""

    __slots__ = ("dst",)
    family = socket.AF_INET

    def __init__(self, dst: tuple[str, int] | None) -> None:
        self.dst = dst

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        assert (level, opt) == (socket.SOL_IP, original_dst.SO_ORIGINAL_DST)
        if self.dst is None:
            raise OSError("no NAT entry")
        ip, port = self.dst
        return struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton(ip))[:size]


class _Tcp:
    """A TCP transport (takes weak references)."""

    def __init__(self, sock: _Sock, sockname: tuple[str, int]) -> None:
        self.extra = {"socket": sock, "sockname": sockname}

    def get_extra_info(self, name: str):
        return self.extra.get(name)


class _Tls:
    """A TLS transport over `tcp`: no weak reference; its extra info is the TCP one's."""

    __slots__ = ("tcp",)

    def __init__(self, tcp: _Tcp) -> None:
        self.tcp = tcp

    def get_extra_info(self, name: str):
        return self.tcp.get_extra_info(name)


LOCAL = ("10.0.0.3", 15006)


def test_restored_destination_seen_through_tls():
    sock = _Sock(("10.0.0.3", 7070))
    tcp = _Tcp(sock, LOCAL)
    assert original_dst.restore(tcp) == ("10.0.0.3", 7070)
    assert original_dst.local_address(tcp) == ("10.0.0.3", 7070)
    # the TLS transport put on it later sees the same original destination
    assert original_dst.local_address(_Tls(tcp)) == ("10.0.0.3", 7070)


def test_tls_without_a_restored_destination_keeps_its_socket_address():
    keep = _Tcp(_Sock(("10.0.0.3", 8080)), LOCAL)  # (something restored elsewhere)
    original_dst.restore(keep)
    plain = _Tcp(_Sock(None), LOCAL)  # no NAT entry: nothing restored
    assert original_dst.restore(plain) is None
    assert original_dst.local_address(_Tls(plain)) == LOCAL
    # a TCP transport gone: what it restored is forgotten, its socket leads nowhere
    sock = _Sock(("10.0.0.3", 9090))
    tcp = _Tcp(sock, LOCAL)
    original_dst.restore(tcp)
    tls = _Tls(tcp)
    assert original_dst.local_address(tls) == ("10.0.0.3", 9090)
    n = len(original_dst._BY_SOCKET)
    tls.tcp = _Tcp(sock, LOCAL)  # (only the socket object outlives it)
    del tcp
    gc.collect()
    assert len(original_dst._BY_SOCKET) == n - 1
    assert original_dst.local_address(tls) == LOCAL
