"""SDS from the pilot (envoy.service.secret.v3 over ADS, SotW and Delta): each sidecar
gets its own workload identity and the root, under Istio's secret names:

    "default"  tls_certificate: a key and a certificate for the stream's SPIFFE id
    "ROOTCA"   validation_context.trusted_ca: the pilot CA's root

The identity comes from the stream's node: metadata NAMESPACE and SERVICE_ACCOUNT (what
Istio's pilot-agent sends), else the namespace of an Istio node id and the node's
`cluster` (the service name sofamesh sidecars give). Any other secret name is refused
(counted, never answered): a stream gets only its own identity. Certificates are
re-issued and pushed at half their life (`rotate_at`), so a sidecar always holds one
that is valid; it rebuilds its TLS context for new handshakes and keeps its connections.

Unlike the other types, these resources are per stream, not shared: they are built here
for each stream and serialized with protobuf (a handful per sidecar per rotation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sofamesh.pilot.ca import CaError, CertificateAuthority, Issued, spiffe_id

log = logging.getLogger("sofamesh.pilot.sds")

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD = "default"
ROOT = "ROOTCA"
ROTATE_AT = 0.5  # fraction of a certificate's life after which a new one is pushed


@dataclass
class _Stream:
    names: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    issued: Issued | None = None
    timer: Any = None  # asyncio.TimerHandle of the next rotation
    nonce: str = ""
    version_sent: str = ""
    version_acked: str = ""
    nack: dict | None = None
    denied: set[str] = field(default_factory=set)
    rotate_due: bool = False  # the rotation timer fired: issue a new certificate


class PilotSds:
    """Attached to an AdsServer as `ads.sds`; Connection hands it Secret requests."""

    def __init__(self, ca: CertificateAuthority, metrics: Any, rotate_at: float = ROTATE_AT):
        self.ca = ca
        self.metrics = metrics
        self.rotate_at = rotate_at
        self.streams: dict[str, _Stream] = {}  # connection id -> state
        self._nonce = 0

    # ---------------------------------------------------------------- identity
    def identity(self, conn: Any) -> str:
        if getattr(conn, "peer_identity", ""):
            return conn.peer_identity  # ADS over mTLS: the certificate decides, not the node
        md = conn.metadata or {}
        info = conn.node_info or {}
        ns = str(md.get("NAMESPACE") or info.get("namespace") or "default")
        sa = str(md.get("SERVICE_ACCOUNT") or conn.node_cluster or "default")
        return spiffe_id(self.ca.trust_domain, ns, sa)

    # ---------------------------------------------------------------- requests
    def on_request(self, conn: Any, req: Any, delta: bool) -> None:
        st = self.streams.get(conn.id)
        if st is None:
            st = self.streams[conn.id] = _Stream()
        nonce = req.response_nonce
        if nonce and nonce == st.nonce:
            err = req.error_detail if req.HasField("error_detail") else None
            if err is not None and (err.code or err.message):
                st.nack = {"version": st.version_sent, "error": err.message, "time": time.time()}
                self.metrics.inc("pilot_xds_nacks_total", type="sds")
                log.warning("SDS NACK from %s: %s", conn.node_id or conn.peer, err.message)
            else:
                st.version_acked = st.version_sent
                self.metrics.inc("pilot_xds_acks_total", type="sds")
        if delta:
            new = set(req.resource_names_subscribe) - st.names
            st.names |= set(req.resource_names_subscribe)
            st.names -= set(req.resource_names_unsubscribe)
        else:
            names = set(req.resource_names)
            new = names - st.names if nonce else names
            st.names = names
        for n in new:
            if n in (WORKLOAD, ROOT):
                st.pending.add(n)
            elif n not in st.denied:
                st.denied.add(n)
                self.metrics.inc("pilot_sds_denied_total")
                log.warning(
                    "SDS: %s asked for secret %r: only %r and %r are served",
                    conn.node_id or conn.peer,
                    n,
                    WORKLOAD,
                    ROOT,
                )
        if st.pending:
            conn.wake.set()

    # ---------------------------------------------------------------- responses
    def responses(self, conn: Any) -> list[bytes]:
        st = self.streams.get(conn.id)
        if st is None or not st.pending:
            return []
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
        from envoy.service.discovery.v3 import discovery_pb2

        secrets = []
        for name in sorted(st.pending):
            s = secret_pb2.Secret(name=name)
            if name == ROOT:
                s.validation_context.trusted_ca.inline_bytes = self.ca.root_pem
            else:
                if st.issued is None or st.rotate_due:
                    st.rotate_due = False
                    try:
                        st.issued = self._issue(conn, st)
                    except CaError as e:
                        log.warning("SDS: no identity for %s: %s", conn.node_id or conn.peer, e)
                        self.metrics.inc("pilot_sds_denied_total")
                        continue
                s.tls_certificate.certificate_chain.inline_bytes = st.issued.cert_pem
                s.tls_certificate.private_key.inline_bytes = st.issued.key_pem
            secrets.append(s)
        st.pending.clear()
        if not secrets:
            return []
        self._nonce += 1
        nonce = f"sds-{self._nonce:x}"
        version = f"{st.issued.serial:x}" if st.issued is not None else "root"
        st.nonce, st.version_sent = nonce, version
        cp = conn.server.identifier
        if conn.delta:
            dr = discovery_pb2.DeltaDiscoveryResponse(
                type_url=SECRET, system_version_info=version, nonce=nonce
            )
            dr.control_plane.identifier = cp
            for s in secrets:
                r = dr.resources.add(name=s.name, version=version)
                r.resource.Pack(s)
            out = dr.SerializeToString()
        else:
            r = discovery_pb2.DiscoveryResponse(type_url=SECRET, version_info=version, nonce=nonce)
            r.control_plane.identifier = cp
            for s in secrets:
                r.resources.add().Pack(s)
            out = r.SerializeToString()
        self.metrics.inc(
            "pilot_xds_pushes_total", type="sds", mode="delta" if conn.delta else "sotw"
        )
        return [out]

    def _rotation_time(self, issued: Issued) -> float:
        return issued.not_before + (issued.not_after - issued.not_before) * self.rotate_at

    def _issue(self, conn: Any, st: _Stream) -> Issued:
        issued = self.ca.issue(self.identity(conn))
        self.metrics.inc("pilot_sds_certs_issued_total")
        if st.timer is not None:
            st.timer.cancel()
        delay = max(self._rotation_time(issued) - time.time(), 0.05)
        st.timer = asyncio.get_running_loop().call_later(delay, self._rotate, conn)
        return issued

    def _rotate(self, conn: Any) -> None:
        st = self.streams.get(conn.id)
        if st is None:
            return
        if conn.server.connections.get(conn.id) is not conn:  # the stream is gone
            self.streams.pop(conn.id, None)
            return
        st.rotate_due = True
        if WORKLOAD in st.names:
            st.pending.add(WORKLOAD)
            self.metrics.inc("pilot_sds_rotations_total")
            conn.wake.set()

    def forget(self, conn: Any) -> None:
        st = self.streams.pop(conn.id, None)
        if st is not None and st.timer is not None:
            st.timer.cancel()

    def describe(self, conn: Any) -> dict | None:
        st = self.streams.get(conn.id)
        if st is None:
            return None
        return {
            "identity": st.issued.spiffe_id if st.issued else "",
            "not_after": st.issued.not_after if st.issued else 0,
            "version_sent": st.version_sent,
            "version_acked": st.version_acked,
            "nack": st.nack,
            "denied": sorted(st.denied),
        }
