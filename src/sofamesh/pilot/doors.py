"""The pilot's registration API and /debug locked with mutual TLS (`--secure-api`): the API
serves HTTPS with a certificate from the pilot's own CA, asks every client for a
certificate of that CA (no certificate, a stranger's, an expired one: the handshake fails
and nothing is read), and a client may register, renew or delete only instances of the
service its identity names: `spiffe://<trust domain>/ns/<namespace>/sa/<service>` may write
`/v1/services/<service>/...`; anything else gets 403 and `pilot_api_forbidden_total`.
Reads (`GET /v1/services`, `/debug/*`, `/metrics`, `/healthz`) need a valid certificate.

Without `--secure-api` the API is open, and the pilot says so at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import Any

from aiohttp import web

from sofamesh.pilot.ca import CertificateAuthority, Issued, spiffe_id

log = logging.getLogger("sofamesh.pilot")

PILOT_IDENTITY = ("sofamesh-system", "pilot")  # namespace, service account
WRITE_METHODS = ("PUT", "DELETE", "POST")


def _load(ctx: ssl.SSLContext, issued: Issued) -> None:
    fds = []
    try:
        paths = []
        for data in (issued.cert_pem, issued.key_pem):
            fd = os.memfd_create("sofamesh-pilot-api", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
            paths.append(f"/proc/self/fd/{fd}")
        ctx.load_cert_chain(paths[0], paths[1])
    finally:
        for fd in fds:
            os.close(fd)


class LockedDoors:
    """The API's SSLContext (its certificate re-issued at half life) and the authorization
    middleware."""

    def __init__(self, ca: CertificateAuthority, host: str, metrics: Any) -> None:
        self.ca = ca
        self.metrics = metrics
        self.identity = spiffe_id(ca.trust_domain, *PILOT_IDENTITY)
        self.host = host
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca.root_pem.decode())
        self.context = ctx
        self._timer: asyncio.TimerHandle | None = None
        self._renew()

    def _renew(self) -> None:
        names = ("localhost",) if self.host in ("127.0.0.1", "::1", "localhost") else ()
        ips: tuple[str, ...] = ()
        try:
            import ipaddress

            ips = (str(ipaddress.ip_address(self.host)),)
        except ValueError:
            names = (*names, self.host)
        issued = self.ca.issue(self.identity, dns=names, ips=ips)
        _load(self.context, issued)  # new handshakes get it; open connections keep theirs
        delay = max((issued.not_after - issued.not_before) / 2, 1.0)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(delay, self._renew)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def caller(self, request: web.Request) -> tuple[str, str] | None:
        """(namespace, service account) of the client's certificate, or None."""
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        for kind, value in (peer or {}).get("subjectAltName", ()):
            if kind != "URI":
                continue
            prefix = f"spiffe://{self.ca.trust_domain}/ns/"
            if value.startswith(prefix):
                ns, _, rest = value[len(prefix) :].partition("/sa/")
                if ns and rest and "/" not in rest:
                    return ns, rest
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method in WRITE_METHODS and request.path.startswith("/v1/services/"):
            service = request.path.split("/")[3]
            who = self.caller(request)
            if who is None or who[1] != service:
                self.metrics.inc("pilot_api_forbidden_total")
                who_text = (
                    f"spiffe://{self.ca.trust_domain}/ns/{who[0]}/sa/{who[1]}" if who else "?"
                )
                log.warning(
                    "API: %s may not %s %s (only instances of its own service)",
                    who_text,
                    request.method,
                    request.path,
                )
                return web.json_response(
                    {
                        "error": f"identity: {who_text} may write only its own service's instances",
                        "field": "identity",
                        "message": f"{who_text} may write only its own service's instances",
                    },
                    status=403,
                )
        return await handler(request)


def _server_names(host: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    import ipaddress

    try:
        return (("localhost",) if ipaddress.ip_address(host).is_loopback else ()), (
            str(ipaddress.ip_address(host)),
        )
    except ValueError:
        return (host,), ()


def xds_credentials(ca: CertificateAuthority, host: str) -> Any:
    """gRPC server credentials for ADS over mutual TLS (`--secure-xds`): the pilot's own
    certificate from its CA (re-issued at half life: the fetcher runs per handshake), clients
    must present a certificate of the CA; the stream's identity is then its URI SAN."""
    import time

    import grpc

    identity = spiffe_id(ca.trust_domain, *PILOT_IDENTITY)
    dns, ips = _server_names(host)
    state: dict = {}

    def config() -> Any:
        issued = ca.issue(identity, dns=dns, ips=ips)
        state["renew_at"] = issued.not_before + (issued.not_after - issued.not_before) / 2
        return grpc.ssl_server_certificate_configuration(
            [(issued.key_pem, issued.cert_pem)], root_certificates=ca.root_pem
        )

    def fetch() -> Any:
        return config() if time.time() >= state["renew_at"] else None

    return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=True)
