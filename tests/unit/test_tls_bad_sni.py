"""A ClientHello with a server name that is not ASCII fails its handshake without a traceback
in the log (proxy/tls.quiet_bad_server_names; found by tests/fuzz/proxy_campaign.py)."""

from __future__ import annotations

import ssl
import sys

import pytest

from sofamesh.proxy import tls
from tests.support.certs import make_ca


def _handshake_with(name: bytes, tmp_path) -> None:
    cert, key = make_ca().write(tmp_path, "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda *a: None
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(cin, cout, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        c.do_handshake()
    hello = cout.read().replace(b"localhost", name)
    sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = ctx.wrap_bio(sin, sout, server_side=True)
    sin.write(hello)
    with pytest.raises(ssl.SSLError):
        s.do_handshake()


def test_a_bad_server_name_fails_quietly(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    _handshake_with(b"local\x80ost", tmp_path)
    assert [type(u.exc_value) for u in seen] == [UnicodeDecodeError]  # Python reports it
    seen.clear()
    tls.quiet_bad_server_names()
    tls.quiet_bad_server_names()  # once is enough
    _handshake_with(b"local\x80ost", tmp_path)
    assert seen == []  # dropped
    sys.unraisablehook(type("U", (), {"exc_value": ValueError("x"), "object": None})())
    assert len(seen) == 1  # anything else still reported
