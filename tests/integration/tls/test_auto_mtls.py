"""Mutual TLS from the generated config (Istio's auto mTLS): an instance registered with the
label `tlsMode: istio` (its sidecar takes mTLS) is reached over mTLS by a caller whose
clusters and endpoints come from `sofamesh pilot`: the generated cluster carries
transport_socket_matches (TLS with the caller's pilot-issued identity and the destination's
SPIFFE id checked, for endpoints whose metadata says tlsMode istio; plaintext otherwise).
Both ways round: an Envoy 1.40 caller to a sofamesh inbound sidecar, and a sofamesh caller
to an Envoy inbound sidecar; an unlabelled instance stays plaintext."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap
from tests.integration.tls.test_pilot_ca import BODY, TD, _App, _proc, _Server, sidecar
from tests.integration.tls.test_tls_rpc import Relay
from tests.support.envoy import ProxyProcess


def _get(port: int, host: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/x", headers={"host": host})
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        c.close()


@pytest.fixture
def app():
    srv = _Server(("127.0.0.1", 0), _App)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(("caller", "callee"), [("envoy", "sofamesh"), ("sofamesh", "envoy")])
def test_generated_clusters_originate_mtls_to_tls_mode_istio(tmp_path, app, caller, callee):
    pilot = PilotProcess(tmp_path / "pilot", extra=["--trust-domain", TD]).start()
    b_ports = {"out": free_port(), "in": free_port()}
    b_admin, a_admin = free_port(), free_port()
    # the callee's sidecar: inbound mTLS (requires the caller's identity svc-a) -> app
    b = _proc(
        callee,
        sidecar("hello", "svc-a", pilot, b_admin, b_ports, app, free_port(), False),
        tmp_path,
    )
    relay = Relay(b_ports["in"])  # the wire between the caller's sidecar and the callee's
    boot = ads_bootstrap(pilot.xds_port, a_admin, False)
    boot["node"] = {
        "id": "sidecar~127.0.0.1~svc-a-0.default~default.svc.cluster.local",
        "cluster": "svc-a",
        "metadata": {"NAMESPACE": "default", "SERVICE_ACCOUNT": "svc-a"},
    }
    a = (
        ProxyProcess.envoy(envoy_binary(), boot, tmp_path / "caller")
        if caller == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / "caller")
    )
    try:
        with b:
            pilot.register(
                "hello",
                "hello-0",
                address="127.0.0.1",
                port=relay.port,
                protocol="http",
                labels={"tlsMode": "istio"},
            )
            pilot.register("plain", "plain-0", address="127.0.0.1", port=app, protocol="http")
            with a:
                deadline = time.monotonic() + 20
                got = (0, b"")
                while time.monotonic() < deadline:
                    got = _get(pilot.outbound_port, "hello")
                    if got[0] == 200:
                        break
                    time.sleep(0.2)
                assert got == (200, BODY), got
                for _ in range(20):
                    assert _get(pilot.outbound_port, "hello") == (200, BODY)
                assert _get(pilot.outbound_port, "plain") == (200, BODY)
                wire = bytes(relay.wire)
                assert wire[:1] == b"\x16" and len(wire) > 2000, wire[:40]
                assert BODY not in wire and b"GET /x" not in wire
    finally:
        relay.close()
        pilot.stop()
