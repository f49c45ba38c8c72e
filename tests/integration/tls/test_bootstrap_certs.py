"""Bootstrap certificates from the pilot (pilot/bootstrap.py): an operator makes a join
secret and a token per workload with `sofamesh cert`; each workload gets its certificate
with `sofamesh cert request` (its own key, a CSR; the pilot's CA key and the workload's key
never cross), then reaches a `--secure-xds --secure-api` pilot with it: a sofamesh and an
Envoy 1.40 sidecar, each bootstrapped only from those files, get their SDS identities and
call each other over mTLS; `sofamesh register` writes its own service with it. Refused: no
credentials, a token of another secret or trust domain, an expired or altered one, a CSR
whose signature does not verify; each answered with the field at fault and counted.
Renewal: `--renew` replaces the files at half life, authenticated by the certificate held."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sofamesh.pilot.bootstrap import make_token
from tests.conftest import free_port, sofamesh_command
from tests.integration.tls.test_pilot_ca import TD, _proc, sidecar, spiffe
from tests.integration.tls.test_pilot_doors import SecurePilot
from tests.integration.tls.test_pilot_secure_xds import (  # noqa: F401 (fixtures)
    app,
    call_each_other,
    pki,
    xds_over_tls,
)


def cert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [*sofamesh_command(), "cert", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def pilot(tmp_path: Path, pki: Path):  # noqa: F811
    d = pki
    cert("secret", "--out", str(d / "join.secret"))
    ca_port = free_port()
    p = SecurePilot(
        tmp_path / "pilot",
        extra=[
            "--trust-domain", TD, "--ca-cert", str(d / "root.crt"), "--ca-key", str(d / "root.key"),
            "--secure-api", "true", "--secure-xds", "true", "--cert-ttl", "6",
            "--join-secret", str(d / "join.secret"), "--ca-address", f"127.0.0.1:{ca_port}",
        ],
    ).start()  # fmt: skip
    p.ca_url = f"https://127.0.0.1:{ca_port}"  # type: ignore[attr-defined]
    p.pki = d  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while "ca=https://" not in p.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield p
    finally:
        p.stop()


def _token(p, service: str, *extra: str) -> str:
    d = p.pki
    return cert(
        "token", "--join-secret", str(d / "join.secret"), "--service", service,
        "--trust-domain", TD, *extra,
    ).stdout.strip()  # fmt: skip


def _request(p, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return cert(
        "request", "--pilot", p.ca_url, "--cacert", str(p.pki / "root.crt"), "--out", str(out),
        *extra, check=check,
    )  # fmt: skip


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _uris(c: x509.Certificate) -> list[str]:
    return c.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)


def _bootstrap_files(boot: dict, out: Path) -> dict:
    """The xds-grpc cluster over mTLS with the files `sofamesh cert request` wrote."""
    return xds_over_tls(boot, out / "cert.pem", out / "key.pem", out / "root.pem")


def test_join_token_to_a_secure_mesh(tmp_path, pilot, app):  # noqa: F811
    p = pilot
    outs = {s: tmp_path / f"work-{s}" for s in ("svc-a", "svc-b")}
    for s, out in outs.items():
        got = _request(p, out, "--token", _token(p, s))
        assert f"certificate for {spiffe(s)}" in got.stdout, got.stdout
        leaf = _leaf(out / "cert.pem")
        assert _uris(leaf) == [spiffe(s)]
        assert leaf.issuer == _leaf(p.pki / "root.crt").subject
        key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
        assert key.public_key().public_bytes(  # the key made here is the certified one
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert os.stat(out / "key.pem").st_mode & 0o777 == 0o600
        assert (out / "root.pem").read_bytes() == (p.pki / "root.crt").read_bytes()
        assert "PRIVATE KEY" not in p.log_text()
    # `sofamesh register` with it: its own service only
    base = [
        *sofamesh_command(), "register", "--pilot", f"https://127.0.0.1:{p.api_port}",
        "--cert", str(outs["svc-a"] / "cert.pem"), "--key", str(outs["svc-a"] / "key.pem"),
        "--cacert", str(outs["svc-a"] / "root.pem"), "--port", "9000", "--once",
    ]  # fmt: skip
    ok = subprocess.run(
        [*base, "--service", "svc-a", "--id", "a-1"], check=False, capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*base, "--service", "svc-b", "--id", "b-1"], check=False, capture_output=True, timeout=30
    )
    assert bad.returncode != 0
    # a sofamesh and an Envoy sidecar, bootstrapped only from those files
    ports = {s: {"out": free_port(), "in": free_port()} for s in "ab"}
    admins = {s: free_port() for s in "ab"}
    boot_a = _bootstrap_files(
        sidecar("svc-a", "svc-b", p, admins["a"], ports["a"], app, ports["b"]["in"], False),
        outs["svc-a"],
    )
    boot_b = _bootstrap_files(
        sidecar("svc-b", "svc-a", p, admins["b"], ports["b"], app, ports["a"]["in"], False),
        outs["svc-b"],
    )
    a, b = _proc("sofamesh", boot_a, tmp_path), _proc("envoy", boot_b, tmp_path)
    with a, b:
        call_each_other(ports, admins)


def _post(p, body: bytes, token: str | None) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(p.pki / "root.crt"))
    ctx.check_hostname = False
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        p.ca_url + "/v1/certificates", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _csr(sans: tuple[str, ...] = ()) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans]),
            critical=False,
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode(), key


def test_what_the_pilot_refuses(pilot):
    p = pilot
    secret = bytes.fromhex((p.pki / "join.secret").read_text().strip())
    good = _token(p, "svc-a")
    csr, _ = _csr()
    # a CSR asking for another identity gets the token's
    st, got = _post(p, json.dumps({"csr": _csr((spiffe("svc-b"),))[0]}).encode(), good)
    assert st == 200 and got["identity"] == spiffe("svc-a")
    assert _uris(x509.load_pem_x509_certificate(got["certificate"].encode())) == [spiffe("svc-a")]
    payload = good.split(".")[1]
    other = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other["sa"] = "svc-b"
    altered_payload = (
        __import__("base64")
        .urlsafe_b64encode(json.dumps(other, separators=(",", ":")).encode())
        .rstrip(b"=")
        .decode()
    )
    refusals = {
        "no credentials": (None, 401, "authorization"),
        "another secret": (make_token(b"x" * 32, TD, "default", "svc-a"), 401, "token"),
        "another trust domain": (make_token(secret, "other.td", "default", "svc-a"), 401, "token"),
        "expired": (make_token(secret, TD, "default", "svc-a", ttl=-5), 401, "token"),
        "altered": (f"smj1.{altered_payload}.{good.split('.')[2]}", 401, "token"),
        "not a token": ("hello", 401, "token"),
    }
    for name, (token, status, field) in refusals.items():
        st, body = _post(p, json.dumps({"csr": csr}).encode(), token)
        assert (st, body.get("field")) == (status, field), (name, st, body)
    st, body = _post(
        p, json.dumps({"csr": csr}).encode(), make_token(secret, TD, "default", "a", -5)
    )
    assert "expired" in body["message"]
    # a CSR whose signature does not verify (its signature bytes flipped), or none at all
    der = x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER)
    broken = der[:-8] + bytes(b ^ 0xFF for b in der[-8:])
    bad_pem = x509.load_der_x509_csr(broken).public_bytes(serialization.Encoding.PEM).decode()
    for body_bytes in (json.dumps({"csr": bad_pem}).encode(), b"{}", b"not json"):
        st, body = _post(p, body_bytes, good)
        assert (st, body["field"]) == (400, "csr"), body
    # counted; and the API's own door still takes no client without a certificate
    ctx = ssl.create_default_context(cafile=str(p.pki / "root.crt"))
    ctx.check_hostname = False
    issued = p.pki.parent / "held"
    _request(p, issued, "--token", good)
    ctx.load_cert_chain(str(issued / "cert.pem"), str(issued / "key.pem"))
    with urllib.request.urlopen(
        f"https://127.0.0.1:{p.api_port}/metrics", timeout=5, context=ctx
    ) as r:
        metrics = r.read().decode()
    counts = {
        ln.split()[0]: float(ln.split()[-1])
        for ln in metrics.splitlines()
        if ln.startswith("pilot_certificates_")
    }
    assert counts['pilot_certificates_issued_total{by="token"}'] == 2, counts
    assert counts['pilot_certificates_denied_total{reason="bad_token"}'] == 6, counts
    assert counts['pilot_certificates_denied_total{reason="no_credentials"}'] == 1, counts
    assert counts['pilot_certificates_denied_total{reason="bad_csr"}'] == 1, counts
    assert counts['pilot_certificates_denied_total{reason="bad_request"}'] == 2, counts


def test_renewal_by_the_certificate_held(tmp_path, pilot):
    p = pilot
    out = tmp_path / "work"
    _request(p, out, "--token", _token(p, "svc-a"))
    first = _leaf(out / "cert.pem")
    # once, without a token: the certificate held authenticates the request
    _request(p, out)
    second = _leaf(out / "cert.pem")
    assert second.serial_number != first.serial_number and _uris(second) == [spiffe("svc-a")]
    # an expired token cannot start it (nothing written)
    gone = tmp_path / "nothing"
    r = _request(p, gone, "--token", _token(p, "svc-a", "--ttl", "-1"), check=False)
    assert r.returncode == 1 and "expired" in r.stderr and not gone.exists()
    # --renew: the files are replaced at half life (6 s certificates) while it runs
    proc = subprocess.Popen(
        [*sofamesh_command(), "cert", "request", "--pilot", p.ca_url,
         "--cacert", str(p.pki / "root.crt"), "--out", str(out), "--renew"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        serials = set()
        deadline = time.monotonic() + 12
        while len(serials) < 3 and time.monotonic() < deadline:
            try:
                serials.add(_leaf(out / "cert.pem").serial_number)
            except ValueError:
                pass  # (never: the files are replaced whole)
            time.sleep(0.1)
        assert len(serials) >= 3, serials
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=5)
