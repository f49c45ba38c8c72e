"""SDS: the secrets TLS contexts name (`tls_certificate_sds_secret_configs`,
`validation_context_sds_secret_config`, `combined_validation_context`), from
`static_resources.secrets` or from an SdsSecretConfig's `sds_config` (ADS, a gRPC
SecretDiscoveryService, or a watched file), delivered by the xDS client
(sofamesh.xds.client, type `...tls.v3.Secret`) through proxy.dynamic.DynamicConfig.

A secret that arrives or changes rebuilds every TLS context that uses it
(`TlsContext.set_secret`): new connections and handshakes get the new certificate,
connections already made keep theirs, so a rotation drops nothing. A secret whose
certificate does not load is NACKed and the last good one stays.
"""

from __future__ import annotations

import logging
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.sds")

SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class SecretManager:
    """The secrets of one Server and the TLS contexts waiting for them."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.static: dict[str, Any] = {s.name: s for s in server.bootstrap.static_resources.secrets}
        self.users: dict[str, list[Any]] = {}  # secret name -> [tls.TlsContext]
        self.source_of: dict[str, str] = {}  # secret name -> xDS source key
        self.held: dict[str, tuple[str, Any]] = {}  # name -> (version, Secret) from xDS
        self.contexts: list[Any] = []  # every TLS context built (/certs)
        self._settings: Any = None

    def settings(self) -> Any:
        if self._settings is None:
            from sofamesh.xds.settings import AdsSettings

            self._settings = AdsSettings.from_bootstrap(self.server.bootstrap)
        return self._settings

    # ---------------------------------------------------------------- contexts
    def register(self, tc: Any) -> None:
        """A TLS context was built: give it the secrets already known, note the others."""
        self.contexts.append(tc)
        for cfg, path in tc.sds_configs:
            name = cfg.name
            if not cfg.HasField("sds_config"):
                secret = self.static.get(name)
                if secret is None:
                    raise UnsupportedConfig(f"{path}: Unknown static secret: {name}")
                tc.set_secret(name, secret)
                continue
            key = self.settings().key_of(cfg.sds_config, f"{path}.sds_config")
            prev = self.source_of.setdefault(name, key)
            if prev != key:
                raise UnsupportedConfig(
                    f"{path}.sds_config: secret {name!r} is already asked for from another "
                    "source (not implemented by sofamesh)"
                )
            self.users.setdefault(name, []).append(tc)
            held = self.held.get(name)
            if held is not None:
                tc.set_secret(name, held[1])

    def forget(self, contexts: list[Any]) -> None:
        """Contexts of a removed listener or cluster stop asking."""
        ids = {id(t) for t in contexts}
        self.contexts = [t for t in self.contexts if id(t) not in ids]
        for name in list(self.users):
            self.users[name] = [t for t in self.users[name] if id(t) not in ids]
            if not self.users[name]:
                del self.users[name]
                self.source_of.pop(name, None)

    def needed(self) -> bool:
        return bool(self.users)

    def names(self) -> set[str]:
        return set(self.users)

    def sources(self) -> dict[str, str]:
        from sofamesh.xds.settings import ADS_KEY

        return {n: k for n, k in self.source_of.items() if n in self.users and k != ADS_KEY}

    def pending(self, server_side: bool) -> int:
        """Listener (server_side) or cluster TLS contexts still without a secret they need."""
        return sum(1 for t in self.contexts if t.server_side == server_side and t.pending())

    # ---------------------------------------------------------------- updates
    def apply(self, up: Any) -> dict[str, str]:
        """An SDS response: each secret is checked, then handed to its contexts."""
        from sofamesh.config.validate import validate_resource

        errors: dict[str, str] = {}
        for name, (version, secret) in up.resources.items():
            problems = validate_resource(secret)
            if problems:
                errors[name] = "; ".join(f"{p.path}: {p.message}" for p in problems)
                continue
            if not (secret.HasField("tls_certificate") or secret.HasField("validation_context")):
                errors[name] = (
                    f"Secret {name}: only tls_certificate and validation_context are "
                    "implemented by sofamesh"
                )
                continue
            try:
                for tc in self.users.get(name, ()):
                    tc.set_secret(name, secret)
            except UnsupportedConfig as e:
                errors[name] = f"Secret {name}: {e}"
                continue
            self.held[name] = (version, secret)
            _bump(self.server.stats, f"sds.{name}.update_success")
        for name in up.removed:
            self.held.pop(name, None)  # contexts keep the last one (Envoy keeps serving it)
        if errors:
            for name in errors:
                _bump(self.server.stats, f"sds.{name}.update_rejected")
        return errors

    def certs(self) -> list[dict]:
        """What /certs shows: every certificate held by a TLS context (Envoy's shape)."""
        return [describe(tc) for tc in self.contexts]


def manager(server: Any) -> SecretManager:
    """The Server's SecretManager, made on first use."""
    m = getattr(server, "secrets", None)
    if m is None:
        m = SecretManager(server)
        server.secrets = m
    return m


def needed(server: Any) -> bool:
    m = getattr(server, "secrets", None)
    return m is not None and m.needed()


def describe(tc: Any) -> dict:
    """envoy.admin.v3.Certificates entry of a TLS context: its CA and its certificate."""
    from cryptography import x509

    def details(pem: bytes, path: str) -> list[dict]:
        res = []
        for c in x509.load_pem_x509_certificates(pem) if pem else []:
            sans = []  # in the certificate's order, as Envoy lists them
            try:
                ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                for name in ext:
                    if isinstance(name, x509.DNSName):
                        sans.append({"dns": name.value})
                    elif isinstance(name, x509.UniformResourceIdentifier):
                        sans.append({"uri": name.value})
                    elif isinstance(name, x509.IPAddress):
                        sans.append({"ip_address": str(name.value)})
            except x509.ExtensionNotFound:
                pass
            import datetime as dt
            import math

            now = dt.datetime.now(dt.UTC)
            left = (c.not_valid_after_utc - now).total_seconds() / 86400
            serial = c.serial_number
            res.append(
                {
                    "path": path,
                    # the serial's bytes in hex (even length), as Envoy prints it
                    "serial_number": serial.to_bytes(max(1, (serial.bit_length() + 7) // 8)).hex(),
                    "subject_alt_names": sans,
                    "days_until_expiration": str(max(math.ceil(left), 0)),
                    "valid_from": c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "expiration_time": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        return res

    from sofamesh.proxy.tls import data_source

    entry: dict = {"ca_cert": [], "cert_chain": []}
    try:
        certs = tc._certificates()
        v = tc._validation()
    except KeyError:  # a secret not there yet
        return entry
    for cert in certs:
        where = (
            "<inline>"
            if cert.certificate_chain.WhichOneof("specifier") != "filename"
            else cert.certificate_chain.filename
        )
        entry["cert_chain"] += details(data_source(cert.certificate_chain, ""), where)
    if v is not None and v.HasField("trusted_ca"):
        where = (
            "<inline>"
            if v.trusted_ca.WhichOneof("specifier") != "filename"
            else v.trusted_ca.filename
        )
        entry["ca_cert"] += details(data_source(v.trusted_ca, ""), where)
    return entry


def _bump(stats: Any, name: str) -> None:
    c = stats.counter(name)
    c.value += 1
    c.used = True
