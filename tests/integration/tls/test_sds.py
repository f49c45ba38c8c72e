"""SDS: a listener's certificate from secrets, rotated with no connection dropped, on
Envoy 1.40 and sofamesh fed the same way: from `static_resources.secrets`, from a file
(`path_config_source`, rotated by moving a new file onto it) and over ADS (a scripted ADS
server pushes new Secrets). After each rotation a new connection gets the new
certificate, and a keep-alive connection made before it goes on answering."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.xds_server import ScriptedAds

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm() -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "sds",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def bootstrap(port: int, admin: int, sds_config: dict | None, extra: dict | None = None) -> dict:
    cfg: dict = {"name": "server"}
    if sds_config is not None:
        cfg["sds_config"] = sds_config
    b: dict = {
        "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local", "cluster": "a"},
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "tls",
                    "stat_prefix": "tls",
                    "address": _addr(port),
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": TLS_DOWN,
                                    "common_tls_context": {
                                        "tls_certificate_sds_secret_configs": [cfg]
                                    },
                                },
                            },
                            "filters": [_hcm()],
                        }
                    ],
                }
            ],
        },
    }
    for k, v in (extra or {}).items():
        if k == "secrets":
            b["static_resources"]["secrets"] = v
        else:
            b[k] = v
    return b


def _secret_json(pair) -> dict:
    return {
        "name": "server",
        "tls_certificate": {
            "certificate_chain": {"inline_string": pair.cert_pem.decode()},
            "private_key": {"inline_string": pair.key_pem.decode()},
        },
    }


def _secret_msg(pair) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name="server")
    s.tls_certificate.certificate_chain.inline_bytes = pair.cert_pem
    s.tls_certificate.private_key.inline_bytes = pair.key_pem
    return s


class KeepAlive:
    """One TLS connection kept open across rotations."""

    def __init__(self, port: int, ca_pem: bytes) -> None:
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        ctx.check_hostname = False
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=3))

    def cn(self) -> str:
        return _cn(self.sock)

    def get(self) -> str:
        self.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"\r\n\r\nok"):
            d = self.sock.recv(4096)
            if not d:
                return "closed"
            got += d
        return got.split(b"\r\n", 1)[0].decode()

    def close(self) -> None:
        self.sock.close()


def _cn(s: ssl.SSLSocket) -> str:
    for rdn in s.getpeercert().get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"


def new_conn_cn(port: int, ca_pem: bytes) -> str:
    try:
        k = KeepAlive(port, ca_pem)
    except (OSError, ssl.SSLError):
        return "rejected"
    try:
        return k.cn() if k.get().endswith("200 OK") else "no answer"
    finally:
        k.close()


def wait_cn(port: int, ca_pem: bytes, want: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        got = new_conn_cn(port, ca_pem)
        if got == want:
            return got
        time.sleep(0.1)
    return got


def _start(kind: str, boot: dict, wd: Path) -> ProxyProcess:
    if kind == "envoy":
        return ProxyProcess.envoy(envoy_binary(), boot, wd)
    workers = 2 if kind.endswith("workers") else 1
    return ProxyProcess.sofamesh(sofamesh_command(), boot, wd, concurrency=workers)


@pytest.fixture(scope="module")
def ca():
    return make_ca("sds CA")


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
def test_static_secret(tmp_path, ca, kind):
    port, admin = free_port(), free_port()
    v1 = make_leaf(ca, cn="static-v1")
    boot = bootstrap(port, admin, None, {"secrets": [_secret_json(v1)]})
    with _start(kind, boot, tmp_path):
        assert new_conn_cn(port, ca.cert_pem) == "static-v1"


def _write_sds_file(path: Path, pair, version: str) -> None:
    doc = {"version_info": version, "resources": [{"@type": SECRET, **_secret_json(pair)}]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, path)  # a move onto the path: what Envoy's file watch reacts to


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
def test_file_sds_rotation_drops_nothing(tmp_path, ca, kind):
    port, admin = free_port(), free_port()
    d = tmp_path / "sds"
    d.mkdir()
    f = d / "server.json"
    _write_sds_file(f, make_leaf(ca, cn="file-v1"), "1")
    boot = bootstrap(port, admin, {"path_config_source": {"path": str(f)}})
    with _start(kind, boot, tmp_path / "run"):
        assert new_conn_cn(port, ca.cert_pem) == "file-v1"
        old = KeepAlive(port, ca.cert_pem)
        try:
            assert old.get().endswith("200 OK")
            for v in ("2", "3"):
                _write_sds_file(f, make_leaf(ca, cn=f"file-v{v}"), v)
                assert wait_cn(port, ca.cert_pem, f"file-v{v}") == f"file-v{v}"
                # the connection made before the rotations answers on, with its certificate
                assert old.get().endswith("200 OK")
                assert old.cn() == "file-v1"
            # a file that is not a valid secret: the last good certificate stays
            bad = d / "bad.json"
            bad.write_text(
                json.dumps(
                    {
                        "version_info": "4",
                        "resources": [
                            {
                                "@type": SECRET,
                                "name": "server",
                                "tls_certificate": {
                                    "certificate_chain": {"inline_string": "garbage"},
                                    "private_key": {"inline_string": "garbage"},
                                },
                            }
                        ],
                    }
                )
            )
            os.rename(bad, f)
            time.sleep(1.0)
            assert new_conn_cn(port, ca.cert_pem) == "file-v3"
            assert old.get().endswith("200 OK")
        finally:
            old.close()


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
async def test_ads_sds_warms_then_rotates(tmp_path, ca, kind):
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port, admin = free_port(), free_port()
    extra = {
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            }
        },
    }
    boot = bootstrap(port, admin, {"ads": {}, "resource_api_version": "V3"}, extra)
    boot["static_resources"]["clusters"] = [
        {
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                    ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "xds",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(xds_port)}}]}],
            },
        }
    ]
    ads.push(SECRET, "1", [_secret_msg(make_leaf(ca, cn="ads-v1"))])
    proxy = _start(kind, boot, tmp_path)
    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(SECRET)
        assert await asyncio.to_thread(new_conn_cn, port, ca.cert_pem) == "ads-v1"
        old = await asyncio.to_thread(KeepAlive, port, ca.cert_pem)
        try:
            for v in ("2", "3"):
                ads.push(SECRET, v, [_secret_msg(make_leaf(ca, cn=f"ads-v{v}"))])
                await ads.acked(SECRET)
                got = await asyncio.to_thread(wait_cn, port, ca.cert_pem, f"ads-v{v}")
                assert got == f"ads-v{v}"
                assert (await asyncio.to_thread(old.get)).endswith("200 OK")
            # a secret whose key does not load is NACKed; the last good one stays
            bad = secret_pb2.Secret(name="server")
            bad.tls_certificate.certificate_chain.inline_string = "garbage"
            bad.tls_certificate.private_key.inline_string = "garbage"
            ads.push(SECRET, "4", [bad])
            assert (await ads.answer(SECRET)).error_detail.code != 0
            assert await asyncio.to_thread(new_conn_cn, port, ca.cert_pem) == "ads-v3"
        finally:
            old.close()
        status, text = await asyncio.to_thread(admin_get, admin, "/certs")
        assert status == 200
        if kind.startswith("sofamesh"):  # /certs names the certificate in use
            doc = json.loads(text)
            assert doc["certificates"][0]["cert_chain"][0]["serial_number"]
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)


LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def _lds_listener(port: int):
    from envoy.config.listener.v3 import listener_pb2
    from google.protobuf import json_format

    lst = bootstrap(port, 0, {"ads": {}, "initial_fetch_timeout": "0s"})["static_resources"][
        "listeners"
    ][0]
    from sofamesh.config import protos

    protos.find_descriptor(TLS_DOWN)
    protos.find_descriptor(HCM)
    protos.find_descriptor("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
    return json_format.ParseDict(lst, listener_pb2.Listener())


def _start_unready(proxy: ProxyProcess, admin: int, timeout: float = 20.0) -> None:
    """Starts the proxy and waits for its admin API only (not /ready)."""
    import subprocess

    with open(proxy.log_path, "wb") as log:
        proxy.proc = subprocess.Popen(
            proxy.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin_get(admin, "/ready", timeout=0.5)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(proxy.log_text())


def _stat(admin: int, name: str) -> int:
    _, text = admin_get(admin, "/stats")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return -1


def _plain_listener(port: int):
    from envoy.config.listener.v3 import listener_pb2
    from google.protobuf import json_format

    from sofamesh.config import protos

    protos.find_descriptor(HCM)
    protos.find_descriptor("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")

    lst = {
        "name": "plain",
        "address": _addr(port),
        "filter_chains": [{"filters": [_hcm()]}],
    }
    return json_format.ParseDict(lst, listener_pb2.Listener())


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
async def test_lds_listener_warms_until_its_secret(tmp_path, ca, kind):
    """A listener added by LDS (after start-up) that names a secret not there yet warms
    until the secret arrives, then serves with it; the other listeners serve meanwhile
    (Envoy's listener warming)."""
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port, plain, admin = free_port(), free_port(), free_port()
    ads_src = {"ads": {}, "resource_api_version": "V3"}
    boot = {
        "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local", "cluster": "a"},
        "admin": {"address": _addr(admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": ads_src,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _addr(xds_port)}}]}
                        ],
                    },
                }
            ]
        },
    }
    ads.push(LDS, "1", [_plain_listener(plain)])
    proxy = _start(kind, boot, tmp_path)

    def counts() -> tuple[int, int]:
        return (
            _stat(admin, "listener_manager.total_listeners_warming"),
            _stat(admin, "listener_manager.total_listeners_active"),
        )

    try:
        await asyncio.to_thread(proxy.start)
        await ads.acked(LDS)
        ads.push(LDS, "2", [_plain_listener(plain), _lds_listener(port)])
        await ads.acked(LDS)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(counts) == (1, 1)
        assert await asyncio.to_thread(new_conn_cn, port, ca.cert_pem) == "rejected"
        ads.push(SECRET, "1", [_secret_msg(make_leaf(ca, cn="lds-v1"))])
        await ads.acked(SECRET)
        assert await asyncio.to_thread(wait_cn, port, ca.cert_pem, "lds-v1") == "lds-v1"
        assert await asyncio.to_thread(counts) == (0, 2)
    finally:
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)


def test_admin_certs_as_envoy(tmp_path, ca):
    """/certs lists each TLS context's CA and certificate as Envoy 1.40's does (paths,
    serial numbers, SANs in certificate order, validity, days until expiration)."""
    leaf = make_leaf(ca, cn="certs", uris=("spiffe://mesh.test/ns/default/sa/x",))
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    seen = {}
    for kind in ("envoy", "sofamesh"):
        port, admin = free_port(), free_port()
        boot = bootstrap(port, admin, None, {"secrets": [_secret_json(leaf)]})
        ts = boot["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
        ts["typed_config"]["common_tls_context"]["validation_context"] = {
            "trusted_ca": {"filename": str(tmp_path / "ca.crt")}
        }
        with _start(kind, boot, tmp_path / kind):
            status, text = admin_get(admin, "/certs")
            assert status == 200
            seen[kind] = json.loads(text)
    assert seen["envoy"]["certificates"][0]["cert_chain"][0]["subject_alt_names"]
    # days_until_expiration: Envoy rounds a day short of a whole number either way from one
    # run to the next; within one day is the same answer
    days = {}
    for kind, doc in seen.items():
        for c in doc["certificates"]:
            for group in ("ca_cert", "cert_chain"):
                for cert in c[group]:
                    days.setdefault(group, []).append(int(cert.pop("days_until_expiration")))
    assert all(abs(a - b) <= 1 for a, b in days.values()), days
    assert seen["sofamesh"] == seen["envoy"]
