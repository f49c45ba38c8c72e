"""envoy.transport_sockets.tls: SSL contexts from Downstream/UpstreamTlsContext, Envoy's ssl.* stats.

OpenSSL through the standard library's `ssl` module, driven by uvloop's own SSLProtocol
(MemoryBIO): nothing of our own on the record path. What Python's `ssl` cannot do during
the handshake (SAN matchers, Envoy's stats) is done by `_MeshSSLObject.do_handshake`, the
context's `sslobject_class`: it runs right after OpenSSL finishes, on the same call, so a
SAN mismatch fails the handshake (uvloop closes the connection) as Envoy's verify callback
does, and counts are taken where Envoy takes them.

Contexts are rebuilt, never mutated: `TlsContext.context` is swapped when an SDS secret
changes; connections keep the SSLContext they were accepted or connected with.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
import weakref
from collections.abc import Callable
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.tls")

DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_NAMES = ("envoy.transport_sockets.tls", "tls")
RAW_NAMES = ("envoy.transport_sockets.raw_buffer", "raw_buffer")

# Envoy's default cipher list (BoringSSL names; `[a|b]` is an equal-preference group, which
# OpenSSL lacks: the group's members are listed in order). TLS 1.3 suites are OpenSSL's.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
)
_VERSIONS = {
    1: ssl.TLSVersion.TLSv1,
    2: ssl.TLSVersion.TLSv1_1,
    3: ssl.TLSVersion.TLSv1_2,
    4: ssl.TLSVersion.TLSv1_3,
}
# Envoy's counters of a TLS context, created with it (so /stats shows them at 0)
STAT_NAMES = (
    "connection_error",
    "handshake",
    "session_reused",
    "no_certificate",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
    "fail_verify_cert_hash",
)
_SAN_TYPES = {1: "email", 2: "DNS", 3: "URI", 4: "IP Address"}


def data_source(ds: Any, path: str) -> bytes:
    """An envoy.config.core.v3.DataSource's bytes (inline or file)."""
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        return ds.inline_string.encode()
    if which == "inline_bytes":
        return bytes(ds.inline_bytes)
    if which == "filename":
        try:
            with open(ds.filename, "rb") as f:
                return f.read()
        except OSError as e:
            raise UnsupportedConfig(f"{path}.filename: cannot read {ds.filename}: {e}") from None
    if which == "environment_variable":
        v = os.environ.get(ds.environment_variable)
        if v is None:
            raise UnsupportedConfig(
                f"{path}.environment_variable: {ds.environment_variable} is not set"
            )
        return v.encode()
    raise UnsupportedConfig(f"{path}: empty data source")


def _load_cert_chain(ctx: ssl.SSLContext, chain: bytes, key: bytes, password: bytes | None) -> None:
    """ssl.load_cert_chain reads files only: hand it memory files (nothing on disk)."""
    fds = []
    try:
        paths = []
        for data in (chain, key):
            fd = os.memfd_create("sofamesh-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
            paths.append(f"/proc/self/fd/{fd}")
        ctx.load_cert_chain(paths[0], paths[1], password=password)
    finally:
        for fd in fds:
            os.close(fd)


def _load_crl(ctx: ssl.SSLContext, crl: bytes) -> None:
    """CRLs load only from a file (`cadata` takes certificates): a memory file again."""
    if b"-----BEGIN X509 CRL-----" not in crl:
        raise ValueError("no PEM CRL (-----BEGIN X509 CRL-----) in it")
    fd = os.memfd_create("sofamesh-crl", os.MFD_CLOEXEC)
    try:
        os.write(fd, crl)
        ctx.load_verify_locations(cafile=f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class _SanMatcher:
    """One SubjectAltNameMatcher (or a legacy match_subject_alt_names entry: any type)."""

    __slots__ = ("ignore_case", "kind", "san_type", "value")

    def __init__(self, san_type: str | None, m: Any, path: str) -> None:
        self.san_type = san_type
        self.kind = m.WhichOneof("match_pattern")
        self.ignore_case = bool(m.ignore_case)
        if self.kind == "safe_regex":
            import re

            self.value: Any = re.compile(m.safe_regex.regex)
        elif self.kind in ("exact", "prefix", "suffix", "contains"):
            v = getattr(m, self.kind)
            self.value = v.lower() if self.ignore_case else v
        else:
            raise UnsupportedConfig(
                f"{path}: SAN matcher {self.kind!r} is not implemented by sofamesh"
            )

    def matches(self, san_type: str, value: str) -> bool:
        if self.san_type is not None and san_type != self.san_type:
            return False
        if self.kind == "safe_regex":
            return self.value.fullmatch(value) is not None
        v = value.lower() if self.ignore_case else value
        if self.kind == "exact":
            if v == self.value:
                return True
            # Envoy's DNS SAN match: a certificate's `*.example.com` covers one label
            if san_type == "DNS" and v.startswith("*.") and "." in self.value:
                return self.value.split(".", 1)[1] == v[2:] and not self.value.startswith(".")
            return False
        if self.kind == "prefix":
            return v.startswith(self.value)
        if self.kind == "suffix":
            return v.endswith(self.value)
        return self.value in v


class _Stats:
    """Envoy's ssl.* counters under one prefix (`listener.<addr>.ssl.` / `cluster.<c>.ssl.`)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.c = {n: store.counter(prefix + n) for n in STAT_NAMES}

    def bump(self, name: str) -> None:
        c = self.c.get(name)
        if c is None:
            c = self.c[name] = self.store.counter(self.prefix + name)
        c.value += 1
        c.used = True


class _MeshSSLObject(ssl.SSLObject):
    """uvloop's SSLProtocol creates these through the context's `sslobject_class`."""

    def do_handshake(self) -> None:
        tc: TlsContext = self.context._sofamesh  # type: ignore[attr-defined]
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as e:
            tc.stats.bump("fail_verify_error")  # Envoy: not also a connection_error
            tc.on_failure(e)
            raise
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(e.reason):
                tc.stats.bump("fail_verify_no_cert")
            else:
                tc.stats.bump("connection_error")
            tc.on_failure(e)
            raise
        tc.handshake_done(self)


class _ResumingContext(ssl.SSLContext):
    """An upstream context that resumes sessions, as Envoy's client contexts do (UpstreamTlsContext
    `max_session_keys`, 1 by default): each new connection offers the session of the last
    connection whose handshake passed every check here (`handshake_done`), taken then and
    again as the next connection starts, if that one is still there (TLS 1.3's session
    ticket comes after the handshake). Python's `ssl` has no new-session callback;
    uvloop's SSLProtocol calls `wrap_bio`, which is where the session goes in."""

    _sofamesh_last: Any = None  # weakref to the last verified SSLObject
    _sofamesh_session: Any = None  # the session taken from it

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):  # type: ignore[no-untyped-def, override]
        if session is None and not server_side:
            last = self._sofamesh_last() if self._sofamesh_last is not None else None
            if last is not None and last.session is not None:
                self._sofamesh_session = last.session
            session = self._sofamesh_session
        return super().wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
            session=session,
        )  # fmt: skip


def quiet_bad_server_names() -> None:
    """A ClientHello whose server name is not ASCII: Python's ssl fails to decode it before
    the sni_callback runs and reports that through sys.unraisablehook, a traceback in the
    log for every such handshake (which fails: ssl.connection_error counts it). A remote
    client must not be able to fill the log: those reports are dropped, others go on."""
    prev = sys.unraisablehook
    if getattr(prev, "sofamesh_bad_sni", False):
        return

    def hook(u: Any) -> None:
        if isinstance(u.exc_value, UnicodeDecodeError) and isinstance(u.object, bytes):
            return
        prev(u)

    hook.sofamesh_bad_sni = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _remember_sni(sslobj: Any, name: str | None, ctx: Any) -> None:
    sslobj._sofamesh_sni = name or ""


def _peer_sans(sslobj: Any) -> list[tuple[str, str]]:
    cert = sslobj.getpeercert()
    return [(str(t), str(v).rstrip("\n")) for t, v in (cert or {}).get("subjectAltName", ())]


def spiffe_id(sslobj: Any) -> str | None:
    """The peer's first URI SAN (its SPIFFE id in a mesh), or None."""
    for t, v in _peer_sans(sslobj):
        if t == "URI":
            return v
    return None


class TlsContext:
    """A compiled CommonTlsContext for one side. `context` is the SSLContext new
    connections use (None until its SDS secrets arrive)."""

    def __init__(
        self,
        msg: Any,
        server_side: bool,
        stats: _Stats,
        path: str,
        record_sni: bool = False,
        default_alpn: list[str] | None = None,
    ) -> None:
        self.msg = msg
        # the listener has a tls_inspector: the SNI is the connection's requested server
        # name (RBAC requested_server_name); without one Envoy knows none
        self.record_sni = record_sni
        self.server_side = server_side
        self.stats = stats
        self.path = path
        self.context: ssl.SSLContext | None = None
        self.require_client_cert = server_side and bool(msg.require_client_certificate.value)
        self.sni = "" if server_side else msg.sni
        # upstream: resume sessions (max_session_keys: 1 by default, 0 turns it off)
        self.resume = not server_side and (
            not msg.HasField("max_session_keys") or msg.max_session_keys.value > 0
        )
        self.alpn: list[str] = list(msg.common_tls_context.alpn_protocols) or list(
            default_alpn or ()
        )
        self.on_failure: Callable[[Exception], None] = lambda e: None
        # SDS: secret name -> the Secret message held (tls_certificate / validation_context)
        self.sds_cert: str = ""
        self.sds_validation: str = ""
        self.sds_configs: list[tuple[Any, str]] = []  # (SdsSecretConfig, its config path)
        self.secrets: dict[str, Any] = {}
        self.watchers: list[Callable[[], None]] = []  # told when `context` changes
        ctx = msg.common_tls_context
        if ctx.tls_certificate_sds_secret_configs:
            if len(ctx.tls_certificate_sds_secret_configs) > 1 or ctx.tls_certificates:
                raise UnsupportedConfig(
                    f"{path}.common_tls_context.tls_certificate_sds_secret_configs: one "
                    "certificate is implemented by sofamesh"
                )
            self.sds_cert = ctx.tls_certificate_sds_secret_configs[0].name
            self.sds_configs.append(
                (
                    ctx.tls_certificate_sds_secret_configs[0],
                    f"{path}.common_tls_context.tls_certificate_sds_secret_configs[0]",
                )
            )
        if ctx.HasField("validation_context_sds_secret_config"):
            self.sds_validation = ctx.validation_context_sds_secret_config.name
            self.sds_configs.append(
                (
                    ctx.validation_context_sds_secret_config,
                    f"{path}.common_tls_context.validation_context_sds_secret_config",
                )
            )
        elif ctx.HasField("combined_validation_context"):
            cvc = ctx.combined_validation_context
            self.sds_validation = cvc.validation_context_sds_secret_config.name
            self.sds_configs.append(
                (
                    cvc.validation_context_sds_secret_config,
                    (
                        f"{path}.common_tls_context.combined_validation_context"
                        ".validation_context_sds_secret_config"
                    ),
                )
            )
        if not self.sds_cert and not self.sds_validation:
            self.context = self.build()

    # ---------------------------------------------------------------- building
    def pending(self) -> list[str]:
        """SDS secrets still missing (the listener or cluster warms until they arrive)."""
        return [n for n in (self.sds_cert, self.sds_validation) if n and n not in self.secrets]

    def set_secret(self, name: str, secret: Any) -> None:
        """An SDS Secret arrived or changed: rebuild (new connections get it; connections
        already made keep their context, none is dropped)."""
        old = self.secrets.get(name)
        self.secrets[name] = secret
        if self.pending():
            return
        try:
            ctx = self.build()
        except UnsupportedConfig:
            if old is None:
                del self.secrets[name]
            else:
                self.secrets[name] = old  # the last good secret stays in use
            raise
        self.context = ctx
        for w in self.watchers:
            w()

    def _validation(self) -> Any:
        ctx = self.msg.common_tls_context
        if self.sds_validation:
            from envoy.extensions.transport_sockets.tls.v3 import common_pb2

            v = common_pb2.CertificateValidationContext()
            if ctx.HasField("combined_validation_context"):
                v.CopyFrom(ctx.combined_validation_context.default_validation_context)
            v.MergeFrom(self.secrets[self.sds_validation].validation_context)
            return v
        return ctx.validation_context if ctx.HasField("validation_context") else None

    def _certificates(self) -> list[Any]:
        ctx = self.msg.common_tls_context
        if self.sds_cert:
            return [self.secrets[self.sds_cert].tls_certificate]
        return list(ctx.tls_certificates)

    def build(self) -> ssl.SSLContext:
        path = self.path + ".common_tls_context"
        if self.server_side:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        elif self.resume:
            ctx = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.sslobject_class = _MeshSSLObject
        ctx._sofamesh = self  # type: ignore[attr-defined]
        params = self.msg.common_tls_context.tls_params
        lo = _VERSIONS.get(params.tls_minimum_protocol_version, ssl.TLSVersion.TLSv1_2)
        # Envoy: TLS 1.3 at most for servers, TLS 1.2 for clients, unless set
        hi = _VERSIONS.get(
            params.tls_maximum_protocol_version,
            ssl.TLSVersion.TLSv1_3 if self.server_side else ssl.TLSVersion.TLSv1_2,
        )
        ctx.minimum_version = lo
        ctx.maximum_version = hi
        ciphers = (
            ":".join(c.strip("[]").replace("|", ":") for c in params.cipher_suites)
            if params.cipher_suites
            else DEFAULT_CIPHERS
        )
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise UnsupportedConfig(
                f"{path}.tls_params.cipher_suites: Failed to initialize cipher suites {ciphers}"
            ) from None
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        if self.server_side and self.record_sni:
            ctx.sni_callback = _remember_sni  # RBAC requested_server_name reads it
            quiet_bad_server_names()
        certs = self._certificates()
        if len(certs) > 1:
            raise UnsupportedConfig(
                f"{path}.tls_certificates: one certificate per context is implemented by sofamesh"
            )
        for i, cert in enumerate(certs):
            cpath = f"{path}.tls_certificates[{i}]"
            chain = data_source(cert.certificate_chain, cpath + ".certificate_chain")
            key = data_source(cert.private_key, cpath + ".private_key")
            pw = (
                data_source(cert.password, cpath + ".password")
                if cert.HasField("password")
                else None
            )
            try:
                _load_cert_chain(ctx, chain, key, pw)
            except (ssl.SSLError, OSError) as e:
                raise UnsupportedConfig(f"{cpath}: Failed to load certificate chain: {e}") from None
            if self.server_side:  # x-forwarded-client-cert's By= (proxy/xfcc.py)
                from sofamesh.proxy.xfcc import local_uris

                ctx._sofamesh_local_uris = local_uris(chain)  # type: ignore[attr-defined]
        if self.server_side and not certs:
            raise UnsupportedConfig(f"{path}: No TLS certificates found for server context")
        v = self._validation()
        san: list[_SanMatcher] = []
        ctx._sofamesh_san = san  # type: ignore[attr-defined]
        if v is not None and v.HasField("trusted_ca"):
            ca = data_source(v.trusted_ca, path + ".validation_context.trusted_ca")
            try:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as e:
                raise UnsupportedConfig(
                    f"{path}.validation_context.trusted_ca: Failed to load trusted CA "
                    f"certificates: {e}"
                ) from None
            if v.HasField("crl"):
                crl = data_source(v.crl, path + ".validation_context.crl")
                try:
                    _load_crl(ctx, crl)
                except (ssl.SSLError, ValueError, OSError) as e:
                    raise UnsupportedConfig(
                        f"{path}.validation_context.crl: Failed to load CRL: {e}"
                    ) from None
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
                if not v.only_verify_leaf_cert_crl:
                    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
            if self.server_side:
                ctx.verify_mode = (
                    ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
                )
            else:
                ctx.verify_mode = ssl.CERT_REQUIRED
            for i, m in enumerate(v.match_typed_subject_alt_names):
                san.append(
                    _SanMatcher(
                        _SAN_TYPES.get(m.san_type),
                        m.matcher,
                        f"{path}.validation_context.match_typed_subject_alt_names[{i}]",
                    )
                )
            for i, m in enumerate(v.match_subject_alt_names):
                san.append(
                    _SanMatcher(None, m, f"{path}.validation_context.match_subject_alt_names[{i}]")
                )
        elif v is not None and (v.match_typed_subject_alt_names or v.match_subject_alt_names):
            raise UnsupportedConfig(
                f"{path}.validation_context: SAN matchers without trusted_ca are not "
                "implemented by sofamesh"
            )
        elif self.require_client_cert:
            raise UnsupportedConfig(
                f"{self.path}.require_client_certificate: needs a validation_context with "
                "trusted_ca (sofamesh verifies every client certificate it asks for)"
            )
        else:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # ---------------------------------------------------------------- per handshake
    def handshake_done(self, sslobj: Any) -> None:
        """Called by _MeshSSLObject once OpenSSL completed the handshake; raising here fails it."""
        st = self.stats
        matchers = sslobj.context._sofamesh_san  # the SAN matchers of this connection's context
        if matchers:
            sans = _peer_sans(sslobj)
            if not any(m.matches(t, v) for m in matchers for t, v in sans):
                st.bump("fail_verify_san")
                e = ssl.SSLCertVerificationError(
                    "certificate verify failed: no subject alternative name matched"
                )
                self.on_failure(e)
                raise e
        st.bump("handshake")
        if sslobj.session_reused:
            st.bump("session_reused")
        if isinstance(sslobj.context, _ResumingContext):  # its session may be offered next
            sslobj.context._sofamesh_last = weakref.ref(sslobj)  # (TLS 1.3: its ticket later)
            sslobj.context._sofamesh_session = sslobj.session
        if self.server_side and sslobj.getpeercert(binary_form=True) is None:
            st.bump("no_certificate")
        cipher = sslobj.cipher()
        if cipher:
            st.bump(f"ciphers.{cipher[0]}")
        version = sslobj.version()
        if version:
            st.bump(f"versions.{version}")


def parse_transport_socket(ts: Any, path: str) -> Any:
    """The TLS context message of a TransportSocket (None for raw_buffer)."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    url = ts.typed_config.type_url
    if url == RAW_BUFFER or (not url and ts.name in RAW_NAMES):
        return None
    if url == DOWNSTREAM_TLS:
        msg = tls_pb2.DownstreamTlsContext()
    elif url == UPSTREAM_TLS:
        msg = tls_pb2.UpstreamTlsContext()
    else:
        raise UnsupportedConfig(
            f"{path}.typed_config: transport socket {url or ts.name} is not implemented by sofamesh"
        )
    ts.typed_config.Unpack(msg)
    return msg


def downstream(
    ts: Any, store: Any, stat_name: str, path: str, record_sni: bool = False
) -> TlsContext | None:
    """A listener filter chain's transport socket, compiled (None: plaintext)."""
    msg = parse_transport_socket(ts, path)
    if msg is None:
        return None
    if msg.DESCRIPTOR.name != "DownstreamTlsContext":
        raise UnsupportedConfig(f"{path}.typed_config: a listener needs a DownstreamTlsContext")
    return TlsContext(
        msg,
        True,
        _Stats(store, f"listener.{stat_name}.ssl."),
        path + ".typed_config",
        record_sni=record_sni,
    )


def upstream(
    ts: Any, store: Any, cluster: str, path: str, default_alpn: list[str] | None = None
) -> TlsContext | None:
    """A cluster's transport socket, compiled (None: plaintext)."""
    msg = parse_transport_socket(ts, path)
    if msg is None:
        return None
    if msg.DESCRIPTOR.name != "UpstreamTlsContext":
        raise UnsupportedConfig(f"{path}.typed_config: a cluster needs an UpstreamTlsContext")
    return TlsContext(
        msg,
        False,
        _Stats(store, f"cluster.{cluster}.ssl."),
        path + ".typed_config",
        default_alpn=default_alpn,
    )


def wrap_server(loop: Any, transport: Any, app_protocol: Any, tc: TlsContext, early: bytes) -> None:
    """Puts the server side of TLS between `transport` (a plain TCP transport whose
    protocol is being replaced) and `app_protocol`, and feeds it the bytes a listener
    filter already read (the ClientHello). app_protocol.connection_made runs after the
    handshake, with the TLS transport (peer certificate in get_extra_info("ssl_object"))."""
    ctx = tc.context
    if ctx is None:  # SDS secret not there yet: Envoy's listener would still be warming
        tc.stats.bump("connection_error")
        transport.abort()
        return
    sp = _ssl_protocol(loop)(loop, app_protocol, ctx, None, server_side=True)
    transport.set_protocol(sp)
    sp.connection_made(transport)
    view = memoryview(early)
    while view:
        buf = sp.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        view = view[n:]
        sp.buffer_updated(n)


_PROTOCOLS: dict[type, Any] = {}


def _ssl_protocol(loop: Any) -> Any:
    """uvloop's SSLProtocol on a uvloop loop, asyncio's otherwise (looked up once per type)."""
    cls = _PROTOCOLS.get(type(loop))
    if cls is None:
        try:
            import uvloop
            from uvloop.loop import SSLProtocol  # type: ignore[attr-defined]

            uv = isinstance(loop, uvloop.Loop)
        except ImportError:
            uv = False
        if not uv:
            from asyncio.sslproto import SSLProtocol
        cls = _PROTOCOLS[type(loop)] = SSLProtocol
    return cls


def ip_san(value: str) -> str:
    """An IP SAN as Python's ssl prints it (for tests and /certs)."""
    return str(ipaddress.ip_address(value))


def _register() -> None:
    from sofamesh.config.support import register_extension

    for url in (DOWNSTREAM_TLS, UPSTREAM_TLS, RAW_BUFFER):
        register_extension(url, "sofamesh.proxy.tls")


_register()


MATCH_NS = "envoy.transport_socket_match"


class UpstreamTransport:
    """A cluster's transport sockets: `transport_socket` and `transport_socket_matches`
    (the first match whose `match` pairs are all in an endpoint's
    `metadata.filter_metadata["envoy.transport_socket_match"]`, Istio's `tlsMode: istio`).
    Hosts carry no metadata: `learn(assignment)` keeps address -> socket, swapped whole."""

    def __init__(self, default: TlsContext | None, matches: list[tuple[dict, TlsContext | None]]):
        self.default = default
        self.matches = matches
        self.by_addr: dict[tuple[str, int], TlsContext | None] = {}

    def contexts(self) -> list[TlsContext]:
        return [t for t in [self.default, *(m[1] for m in self.matches)] if t is not None]

    def learn(self, cla: Any) -> None:
        if not self.matches:
            return
        from google.protobuf import json_format

        by_addr: dict[tuple[str, int], TlsContext | None] = {}
        for e in cla.endpoints:
            for lbe in e.lb_endpoints:
                sa = lbe.endpoint.address.socket_address
                md = lbe.metadata.filter_metadata.get(MATCH_NS)
                fields = json_format.MessageToDict(md) if md is not None else {}
                for want, tc in self.matches:
                    if all(fields.get(k) == v for k, v in want.items()):
                        by_addr[(sa.address, sa.port_value)] = tc
                        break
        self.by_addr = by_addr

    def for_host(self, host: Any) -> TlsContext | None:
        # a DNS cluster's endpoints name hosts by their DNS name (Host.hostname; an IP
        # endpoint's Host.hostname is its Endpoint.hostname, so its address comes first)
        key = (host.address, host.port)
        if key in self.by_addr:
            return self.by_addr[key]
        return self.by_addr.get((host.hostname, host.port), self.default)

    def connect_kw(self, host: Any) -> dict:
        """loop.create_connection keywords for a new connection to `host` ({}: plaintext)."""
        tc = self.for_host(host)
        if tc is None:
            return {}
        if tc.context is None:  # SDS secret not there yet (Envoy's cluster would be warming)
            tc.stats.bump("connection_error")
            raise ssl.SSLError("TLS context not ready: waiting for its SDS secret")
        return {"ssl": tc.context, "server_hostname": tc.sni or ""}

    def connect(self, loop: Any, factory: Any, host: Any) -> Any:
        """The create_connection coroutine to `host` (upstream.connect, every pool's dial)."""
        return loop.create_connection(factory, host.address, host.port, **self.connect_kw(host))


def upstream_transport(
    c: Any, store: Any, path: str, server: Any = None, h2: bool = False
) -> UpstreamTransport | None:
    """The UpstreamTransport of an envoy.config.cluster.v3.Cluster (None: all plaintext);
    its contexts are registered with the server's SecretManager (SDS, /certs)."""
    from google.protobuf import json_format

    alpn = ["h2"] if h2 else []  # Envoy's HTTP/2 pool asks for h2 when the context names none
    default = None
    if c.HasField("transport_socket"):
        default = upstream(
            c.transport_socket, store, c.name, path + ".transport_socket", default_alpn=alpn
        )
    matches = []
    for i, m in enumerate(c.transport_socket_matches):
        mpath = f"{path}.transport_socket_matches[{i}]"
        tc = upstream(
            m.transport_socket, store, c.name, mpath + ".transport_socket", default_alpn=alpn
        )
        matches.append((json_format.MessageToDict(m.match), tc))
    if default is None and not any(tc is not None for _, tc in matches):
        return None
    t = UpstreamTransport(default, matches)
    t.learn(c.load_assignment)
    if server is not None:
        from sofamesh.proxy import sds

        for tc in t.contexts():
            sds.manager(server).register(tc)
    return t


def grpc_channel_tls(bootstrap: Any, cluster: str) -> tuple[bytes, Any, Any, str] | None:
    """(trusted CA, key, certificate chain, SNI) for a gRPC client (the xDS client) of static
    cluster `cluster` when its transport socket is TLS, else None. grpcio always verifies
    the server and its name, so a trusted_ca is required; certificates must be inline or in
    files (an xDS connection cannot wait for SDS, which it carries)."""
    for i, c in enumerate(bootstrap.static_resources.clusters):
        if c.name != cluster or not c.HasField("transport_socket"):
            continue
        path = f"static_resources.clusters[{i}].transport_socket"
        msg = parse_transport_socket(c.transport_socket, path)
        if msg is None:
            return None
        common = msg.common_tls_context
        cpath = path + ".typed_config.common_tls_context"
        if (
            common.tls_certificate_sds_secret_configs
            or not common.HasField("validation_context")
            or not common.validation_context.HasField("trusted_ca")
        ):
            raise UnsupportedConfig(
                f"{cpath}: the xDS client's cluster needs inline or file certificates and a "
                "validation_context trusted_ca (not implemented by sofamesh otherwise)"
            )
        ca = data_source(common.validation_context.trusted_ca, cpath + ".validation_context")
        key = chain = None
        if common.tls_certificates:
            cert = common.tls_certificates[0]
            chain = data_source(cert.certificate_chain, cpath + ".tls_certificates[0]")
            key = data_source(cert.private_key, cpath + ".tls_certificates[0]")
        return ca, key, chain, msg.sni
    return None
