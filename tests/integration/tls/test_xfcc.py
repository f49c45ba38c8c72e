"""`x-forwarded-client-cert` through Envoy 1.40 and sofamesh, one bootstrap: each
`forward_client_cert_details` mode (and Istio's APPEND_FORWARD with subject, URI and DNS),
on TLS listeners that ask for a client certificate and on a plaintext one, for clients with
and without a certificate that send no, one or two XFCC headers: the upstream sees the same
x-forwarded-client-cert (By=, Hash=, Cert=, Subject=, URI=, DNS=, appended or replaced) from
both proxies. `chain` is refused by name."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.tls.test_tls_downstream import HCM, SPIFFE_A, _addr, _client_ctx, _tls
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess
from tests.support.tcp_echo import ThreadedServer, header_echo

GATEWAY = "spiffe://mesh.local/ns/istio-system/sa/gateway"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# listener name -> (forward_client_cert_details or None, set_current_client_cert_details, TLS)
LISTENERS = {
    "default": (None, None, True),
    "forward_only": ("FORWARD_ONLY", None, True),
    "istio": ("APPEND_FORWARD", {"subject": True, "dns": True, "uri": True}, True),
    "append_cert": ("APPEND_FORWARD", {"cert": True}, True),
    "append_bare": ("APPEND_FORWARD", None, True),
    "set_all": ("SANITIZE_SET", {"subject": True, "uri": True, "dns": True, "cert": True}, True),
    "always": ("ALWAYS_FORWARD_ONLY", None, True),
    "plain_append": ("APPEND_FORWARD", {"subject": True, "uri": True}, False),
    "plain_always": ("ALWAYS_FORWARD_ONLY", None, False),
}
INCOMING = {
    "none": [],
    "one": [("x-forwarded-client-cert", "By=spiffe://up;Hash=abc;URI=spiffe://client")],
    "two": [
        ("x-forwarded-client-cert", "By=spiffe://a;Hash=1"),
        ("x-forwarded-client-cert", "By=spiffe://b;Hash=2"),
    ],
}
CLIENTS = ("none", "client_a", "client_org")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("xfcc-pki")
    ca = make_ca("mesh CA")
    out = {
        "dir": d,
        "ca": ca,
        "server": make_leaf(ca, cn="gateway", dns=("gw.example.com",), uris=(GATEWAY,)),
        "client_a": make_leaf(ca, cn="client-a", dns=(), uris=(SPIFFE_A,), ips=()),
        "client_org": make_leaf(
            ca,
            cn="client org",
            dns=("c1.example.com", "c2.example.com"),
            ips=(),
            org="Acme, Inc",
            unit="Mesh",
        ),
    }
    (d / "ca.crt").write_bytes(ca.cert_pem)
    for name in ("client_a", "client_org"):
        out[name].write(d, name)
    return out


def _listener(name: str, port: int, spec: tuple, pki: dict) -> dict:
    mode, details, tls = spec
    hcm: dict = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if mode:
        hcm["forward_client_cert_details"] = mode
    if details:
        hcm["set_current_client_cert_details"] = details
    chain: dict = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if tls:  # a client certificate is asked for, not required
        chain["transport_socket"] = _tls(pki["server"], trusted=pki["dir"] / "ca.crt")
    return {"name": name, "address": _addr(port), "filter_chains": [chain]}


def _bootstrap(pki: dict, ports: dict[str, int], admin: int, echo: int) -> dict:
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [_listener(n, ports[n], s, pki) for n, s in LISTENERS.items()],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(echo)}}]}],
                    },
                }
            ],
        },
    }


def _ask(port: int, tls: bool, pki: dict, client: str, headers: list) -> str:
    if tls:
        ctx = _client_ctx(pki, None if client == "none" else client)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ctx, timeout=5
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", "/", skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return f"{r.status} {r.read().decode()}"
    finally:
        conn.close()


def _run(kind: str, pki: dict, echo: int, work: Path) -> dict[str, str]:
    ports = {n: free_port() for n in LISTENERS}
    b = _bootstrap(pki, ports, free_port(), echo)
    proc = (
        ProxyProcess.envoy(envoy_binary(), b, work)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), b, work)
    ).start()
    try:
        out = {}
        for n, (_, _, tls) in LISTENERS.items():
            for client in CLIENTS if tls else ("none",):
                for inc, hs in INCOMING.items():
                    out[f"{n} client={client} xfcc={inc}"] = _ask(ports[n], tls, pki, client, hs)
        return out
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def echo():
    srv = ThreadedServer(("127.0.0.1", 0), header_echo(b"x-forwarded-client-cert"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_upstream_sees_the_same_xfcc(pki, echo, tmp_path):
    envoy = _run("envoy", pki, echo, tmp_path / "envoy")
    ours = _run("sofamesh", pki, echo, tmp_path / "sofamesh")
    bad = {k: (envoy[k], ours[k]) for k in envoy if envoy[k] != ours[k]}
    assert not bad, "\n".join(
        f"{k}:\n  envoy:    {e!r}\n  sofamesh: {o!r}" for k, (e, o) in bad.items()
    )
    # the cases do what they are named for (not all '-')
    assert envoy["istio client=client_a xfcc=none"].startswith(f"200 By={GATEWAY};Hash=")
    assert f"URI={SPIFFE_A}" in envoy["istio client=client_a xfcc=one"]
    assert envoy["default client=client_a xfcc=one"] == "200 -"
    # two headers leave as one (Envoy keeps the header as one inline header)
    assert envoy["always client=none xfcc=two"] == "200 By=spiffe://a;Hash=1,By=spiffe://b;Hash=2"
    assert (
        'Subject="CN=client org,OU=Mesh,O=Acme\\, Inc"'
        in envoy["istio client=client_org xfcc=none"]
    )


def test_chain_is_refused_by_name(pki, tmp_path):
    b = _bootstrap(pki, {n: free_port() for n in LISTENERS}, free_port(), free_port())
    hcm = b["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["set_current_client_cert_details"] = {"chain": True}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(b))
    r = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "set_current_client_cert_details.chain is not implemented by sofamesh" in r.stderr
