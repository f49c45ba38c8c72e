"""Bootstrap certificates from the pilot: how a workload gets its first certificate of the
pilot's CA (the one its sidecar needs on the xds-grpc cluster of a `--secure-xds` pilot, and
`sofamesh register` on a `--secure-api` one) without the CA's key ever leaving the pilot,
and without the workload's key ever leaving the workload. Istio's agent sends a CSR with a
Kubernetes token; outside Kubernetes, sofamesh uses join tokens:

1. The operator holds a join secret (`sofamesh cert secret --out FILE`: 32 random bytes) and
   gives it to the pilot (`--join-secret FILE`), which then serves certificate requests on
   `--ca-address` (default 127.0.0.1:15012) over TLS with its own certificate.
2. For a workload, the operator mints a join token (`sofamesh cert token --join-secret FILE
   --service reviews [--namespace prod] [--ttl 3600]`): `smj1.<payload>.<HMAC-SHA256>`,
   naming one identity `spiffe://<trust domain>/ns/<namespace>/sa/<service>` and an expiry.
   It is a bearer credential until it expires: hand it over as a secret.
3. The workload runs `sofamesh cert request --pilot https://HOST:15012 --cacert root.pem
   --token TOKEN --out DIR`: it makes its own key, sends a certificate request (CSR) signed
   by it, and writes `key.pem` (0600), `cert.pem` and `root.pem`. With `--renew` it keeps
   running and renews at half life with a new key, authenticated by the certificate it holds
   (mutual TLS; no token needed any more), replacing the files atomically: a sidecar that
   reads them (file SDS, the xds-grpc cluster's certificate files) picks each one up.

The pilot signs the CSR's key for the identity the token (or the client certificate) names,
whatever the request asks for; a bad, expired or forged token, a CSR whose signature does not
verify, or an unsupported key gets an error naming the field and a counter
(`pilot_certificates_denied_total{reason}`); issued ones count in
`pilot_certificates_issued_total{by}` (token or certificate).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import sys
import time
from typing import Any

log = logging.getLogger("sofamesh.pilot.bootstrap")

TOKEN_PREFIX = "smj1"
DEFAULT_TOKEN_TTL = 3600
MAX_CSR_BYTES = 16 * 1024


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(path: str) -> bytes:
    """A join secret file: at least 16 bytes of key (hex as `cert secret` writes it, or raw)."""
    with open(path, "rb") as f:
        raw = f.read().strip()
    try:
        key = bytes.fromhex(raw.decode())
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < 16:
        raise ValueError(f"join secret {path}: at least 16 bytes, got {len(key)}")
    return key


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, f"{TOKEN_PREFIX}.{payload}".encode(), hashlib.sha256).digest())


def make_token(
    secret: bytes,
    trust_domain: str,
    namespace: str,
    service: str,
    ttl: float = DEFAULT_TOKEN_TTL,
    now: float | None = None,
) -> str:
    from sofamesh.pilot.ca import spiffe_id

    spiffe_id(trust_domain, namespace, service)  # the names must make an identity
    exp = int((time.time() if now is None else now) + ttl)
    body = {"td": trust_domain, "ns": namespace, "sa": service, "exp": exp}
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{TOKEN_PREFIX}.{payload}.{_sign(secret, payload)}"


def verify_token(
    secret: bytes, token: str, trust_domain: str, now: float | None = None
) -> tuple[str, str]:
    """(namespace, service account) a valid token names; TokenError saying why not."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenError(f"not a join token (expected {TOKEN_PREFIX}.<payload>.<signature>)")
    if not hmac.compare_digest(_sign(secret, parts[1]), parts[2]):
        raise TokenError("signature does not verify (another join secret, or altered)")
    try:
        body = json.loads(_unb64(parts[1]))
        td, ns, sa, exp = body["td"], body["ns"], body["sa"], int(body["exp"])
    except (ValueError, KeyError, TypeError) as e:
        raise TokenError(f"unreadable payload: {e}") from None
    if td != trust_domain:
        raise TokenError(f"for trust domain {td!r}, this pilot's is {trust_domain!r}")
    if exp < (time.time() if now is None else now):
        raise TokenError(f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}")
    return str(ns), str(sa)


def _check_key(key: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise ValueError(f"EC curve {key.curve.name}: P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 4096:
            raise ValueError(f"RSA {key.key_size} bits: 2048 to 4096")
    else:
        raise ValueError(f"{type(key).__name__}: an EC (P-256, P-384) or RSA key")  # noqa: TRY004


class CertificateDoor:
    """`POST /v1/certificates` {"csr": PEM} on its own TLS port: a join token
    (`Authorization: Bearer`) or a client certificate of the CA (renewal) names the identity;
    the answer is {"certificate", "root", "identity", "not_after"}."""

    def __init__(self, ca: Any, secret: bytes, host: str, metrics: Any) -> None:
        from aiohttp import web

        from sofamesh.pilot.doors import LockedDoors

        self.ca = ca
        self.secret = secret
        self.metrics = metrics
        self.tls = LockedDoors(ca, host, metrics)  # our certificate, re-issued at half life
        self.tls.context.verify_mode = ssl.CERT_OPTIONAL  # a token, or a certificate
        self.app = web.Application(client_max_size=MAX_CSR_BYTES)
        self.app.router.add_post("/v1/certificates", self.issue)
        self._runner: Any = None

    async def start(self, host: str, port: int) -> int:
        from aiohttp import web

        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False, ssl_context=self.tls.context)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.tls.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _deny(self, status: int, reason: str, field: str, message: str) -> Any:
        from aiohttp import web

        self.metrics.inc("pilot_certificates_denied_total", reason=reason)
        log.warning("certificate request refused: %s: %s", field, message)
        return web.json_response(
            {"error": f"{field}: {message}", "field": field, "message": message}, status=status
        )

    async def issue(self, request: Any) -> Any:
        from aiohttp import web
        from cryptography import x509

        from sofamesh.pilot.ca import CaError, spiffe_id

        who = self.tls.caller(request)
        by = "certificate"
        if who is None:
            auth = request.headers.get("authorization", "")
            if not auth.lower().startswith("bearer "):
                return self._deny(
                    401,
                    "no_credentials",
                    "authorization",
                    "a join token (Authorization: Bearer ...) or a certificate of this CA",
                )
            try:
                who = verify_token(self.secret, auth[7:].strip(), self.ca.trust_domain)
            except TokenError as e:
                return self._deny(401, "bad_token", "token", str(e))
            by = "token"
        try:
            body = await request.json()
            pem = body["csr"]
            if not isinstance(pem, str):
                raise TypeError("csr must be a PEM string")
        except Exception as e:  # noqa: BLE001 - any unreadable body is the client's error
            return self._deny(400, "bad_request", "csr", f"a JSON object with a PEM csr: {e}")
        try:
            csr = x509.load_pem_x509_csr(pem.encode())
            if not csr.is_signature_valid:
                raise ValueError("its signature does not verify with its key")
            key = csr.public_key()
            _check_key(key)
        except ValueError as e:
            return self._deny(400, "bad_csr", "csr", str(e))
        try:
            identity = spiffe_id(self.ca.trust_domain, *who)
            issued = self.ca.issue(identity, public_key=key)
        except CaError as e:
            return self._deny(400, "bad_identity", "identity", str(e))
        self.metrics.inc("pilot_certificates_issued_total", by=by)
        log.info("certificate for %s issued (by %s)", identity, by)
        return web.json_response(
            {
                "identity": identity,
                "certificate": issued.cert_pem.decode(),
                "root": self.ca.root_pem.decode(),
                "not_after": issued.not_after,
            }
        )


# --- `sofamesh cert`: the operator's and the workload's side ------------------------------


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def request_certificate(
    url: str, cacert: str, out: str, token: str | None = None, timeout: float = 10.0
) -> dict:
    """Makes a key, asks the pilot for its certificate (with `token`, else with the
    certificate already in `out`), writes the three files; the pilot's answer."""
    import urllib.error
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    ctx = ssl.create_default_context(cafile=cacert)
    ctx.check_hostname = False  # the pilot's certificate is its SPIFFE id, checked below
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    else:
        ctx.load_cert_chain(os.path.join(out, "cert.pem"), os.path.join(out, "key.pem"))
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/certificates",
        data=json.dumps({"csr": csr.decode()}).encode(),
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            got = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise RuntimeError(f"pilot refused ({e.code}): {detail}") from None
    cert = x509.load_pem_x509_certificate(got["certificate"].encode())
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    got_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != got_key:
        raise RuntimeError("the pilot's certificate is not for the key this request sent")
    os.makedirs(out, exist_ok=True)
    _write_atomic(
        os.path.join(out, "key.pem"),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_atomic(os.path.join(out, "cert.pem"), got["certificate"].encode())
    _write_atomic(os.path.join(out, "root.pem"), got["root"].encode())
    return dict(got)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sofamesh cert", description="bootstrap certificates from a pilot's CA"
    )
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("secret", help="make a join secret (the pilot's --join-secret)")
    s.add_argument("--out", required=True, help="file to write (created 0600, not overwritten)")
    t = sub.add_parser("token", help="mint a join token for one workload identity")
    t.add_argument("--join-secret", required=True, help="the pilot's --join-secret file")
    t.add_argument("--service", required=True, help="the identity's service account")
    t.add_argument("--namespace", default="default")
    t.add_argument("--trust-domain", default="cluster.local", help="the pilot's trust domain")
    t.add_argument("--ttl", type=float, default=DEFAULT_TOKEN_TTL, help="seconds it is valid")
    r = sub.add_parser("request", help="get this workload's certificate (and keep it renewed)")
    r.add_argument("--pilot", required=True, help="https://HOST:PORT of the pilot's --ca-address")
    r.add_argument("--cacert", required=True, help="the pilot's root certificate (PEM)")
    r.add_argument("--token", default=None, help="a join token (else: renew with --out's cert)")
    r.add_argument("--out", required=True, help="directory for key.pem, cert.pem, root.pem")
    r.add_argument(
        "--renew", action="store_true", help="keep running: renew at half life, until stopped"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.what == "secret":
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            print(f"sofamesh cert: {args.out} exists; not overwritten", file=sys.stderr)
            return 1
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return 0
    if args.what == "token":
        try:
            secret = load_secret(args.join_secret)
            print(make_token(secret, args.trust_domain, args.namespace, args.service, args.ttl))
        except (OSError, ValueError) as e:
            print(f"sofamesh cert: {e}", file=sys.stderr)
            return 1
        return 0
    token = args.token
    while True:
        try:
            got = request_certificate(args.pilot, args.cacert, args.out, token)
        except (OSError, RuntimeError, ValueError) as e:
            print(f"sofamesh cert: {e}", file=sys.stderr, flush=True)
            if not args.renew or token:
                return 1
            time.sleep(5)  # renewing: the pilot may be back soon; the current one still holds
            continue
        token = None  # renewals use the certificate just written
        print(
            f"certificate for {got['identity']} until "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(got['not_after']))} in {args.out}",
            flush=True,
        )
        if not args.renew:
            return 0
        time.sleep(max((got["not_after"] - time.time()) / 2, 1.0))
