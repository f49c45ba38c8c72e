"""The pilot's own doors locked (`sofamesh pilot --secure-api`): its registration API and
/debug over mutual TLS with its CA. A workload holding service A's certificate registers,
renews and deletes A's instances, and gets 403 (counted) for B's; without a certificate,
or with another CA's, the handshake fails and nothing is written."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from sofamesh.pilot.ca import CertificateAuthority, spiffe_id
from tests.integration.pilot.conftest import PilotProcess
from tests.support.certs import make_ca, make_leaf

TD = "mesh.test"


class SecurePilot(PilotProcess):
    def start(self, timeout: float = 20.0) -> SecurePilot:
        import subprocess

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_text())
            try:
                socket.create_connection(("127.0.0.1", self.api_port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pilot not ready:\n{self.log_text()}")


@pytest.fixture
def setup(tmp_path: Path):
    ca = CertificateAuthority(TD)
    d = tmp_path / "pki"
    d.mkdir()
    (d / "root.crt").write_bytes(ca.root_pem)
    from cryptography.hazmat.primitives import serialization

    (d / "root.key").write_bytes(
        ca._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for sa in ("svc-a", "svc-b"):
        issued = ca.issue(spiffe_id(TD, "default", sa))
        (d / f"{sa}.crt").write_bytes(issued.cert_pem)
        (d / f"{sa}.key").write_bytes(issued.key_pem)
    make_leaf(
        make_ca("stranger CA"), cn="x", dns=(), uris=(spiffe_id(TD, "default", "svc-a"),)
    ).write(d, "stranger")
    pilot = SecurePilot(
        tmp_path / "pilot",
        extra=[
            "--trust-domain",
            TD,
            "--ca-cert",
            str(d / "root.crt"),
            "--ca-key",
            str(d / "root.key"),
            "--secure-api",
            "true",
        ],
    ).start()
    try:
        yield pilot, d
    finally:
        pilot.stop()


def call(pilot, d: Path, who: str | None, method: str, path: str, body=None):
    ctx = ssl.create_default_context(cafile=str(d / "root.crt"))
    if who is not None:
        ctx.load_cert_chain(str(d / f"{who}.crt"), str(d / f"{who}.key"))
    c = http.client.HTTPSConnection("127.0.0.1", pilot.api_port, context=ctx, timeout=5)
    try:
        c.request(
            method,
            path,
            body=json.dumps(body) if body is not None else None,
            headers={"content-type": "application/json"},
        )
        r = c.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw and raw[:1] in b"{[" else raw.decode())
    except (ssl.SSLError, OSError) as e:
        return "tls-refused", repr(e)
    finally:
        c.close()


def test_only_your_own_service(setup):
    pilot, d = setup
    inst = {"address": "127.0.0.1", "port": 8080, "protocol": "http", "ttl_seconds": 30}
    assert call(pilot, d, "svc-a", "PUT", "/v1/services/svc-a/instances/a-1", inst)[0] == 201
    assert call(pilot, d, "svc-a", "PUT", "/v1/services/svc-a/instances/a-1/heartbeat")[0] == 200
    st, body = call(pilot, d, "svc-a", "PUT", "/v1/services/svc-b/instances/b-1", inst)
    assert st == 403 and body["field"] == "identity", body
    assert call(pilot, d, "svc-b", "PUT", "/v1/services/svc-b/instances/b-1", inst)[0] == 201
    assert call(pilot, d, "svc-b", "DELETE", "/v1/services/svc-a/instances/a-1")[0] == 403
    assert call(pilot, d, "svc-a", "PUT", "/v1/services/svc-b/instances/b-1/heartbeat")[0] == 403
    # no certificate, or a stranger's: refused at the handshake, nothing written
    assert call(pilot, d, None, "PUT", "/v1/services/svc-c/instances/c-1", inst)[0] == "tls-refused"
    assert (
        call(pilot, d, "stranger", "PUT", "/v1/services/svc-a/instances/x-1", inst)[0]
        == "tls-refused"
    )
    st, listing = call(pilot, d, "svc-b", "GET", "/v1/services")
    assert st == 200
    names = {s["name"] if isinstance(s, dict) else s for s in listing["services"]}
    assert names == {"svc-a", "svc-b"}, listing
    st, a = call(pilot, d, "svc-b", "GET", "/v1/services/svc-a")
    assert [i["instance_id"] for i in a["instances"]] == ["a-1"]
    assert call(pilot, d, "svc-a", "DELETE", "/v1/services/svc-a/instances/a-1")[0] == 204
    assert call(pilot, d, None, "GET", "/debug/connections")[0] == "tls-refused"
    st, metrics = call(pilot, d, "svc-a", "GET", "/metrics")
    assert st == 200
    forbidden = [ln for ln in metrics.splitlines() if ln.startswith("pilot_api_forbidden_total")]
    assert forbidden and float(forbidden[0].split()[-1]) == 3, forbidden


def test_sofamesh_register_with_its_certificate(setup):
    """`sofamesh register --cert/--key/--cacert` against a --secure-api pilot: its own
    service is written; another service's instance is refused (exit status 1)."""
    import subprocess

    from tests.conftest import sofamesh_command

    pilot, d = setup
    base = [
        *sofamesh_command(),
        "register",
        "--pilot",
        f"https://127.0.0.1:{pilot.api_port}",
        "--cert",
        str(d / "svc-a.crt"),
        "--key",
        str(d / "svc-a.key"),
        "--cacert",
        str(d / "root.crt"),
        "--port",
        "9000",
        "--once",
    ]
    ok = subprocess.run(
        [*base, "--service", "svc-a", "--id", "a-9"], capture_output=True, timeout=30, check=False
    )
    assert ok.returncode == 0, ok.stderr
    _, a = call(pilot, d, "svc-a", "GET", "/v1/services/svc-a")
    assert [i["instance_id"] for i in a["instances"]] == ["a-9"]
    bad = subprocess.run(
        [*base, "--service", "svc-b", "--id", "b-9"], capture_output=True, timeout=30, check=False
    )
    assert bad.returncode != 0
    assert call(pilot, d, "svc-a", "GET", "/v1/services/svc-b")[0] == 404
