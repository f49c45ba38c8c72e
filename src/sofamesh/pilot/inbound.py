"""Inbound listeners per sidecar: the pilot tells each sidecar how to take calls for its own
instances, with mutual TLS by default (Istio's ingress listener with a default endpoint,
its Sidecar resource's `ingress` without traffic capture, and its PeerAuthentication).
A sidecar whose node metadata says `INTERCEPTION_MODE: REDIRECT` gets the traffic-capture
form instead, one `virtualInbound` listener on 15006 (pilot/capture.py); what follows is
the form without capture. The chains themselves are pilot/inbound_chains.py's, the same in
both forms.

An instance opts in with the label `sofamesh.io/app-port: "<port>"`: callers dial the
instance's address and port (what it registered); its sidecar listens there and hands each
call to the application at 127.0.0.1:<app-port>. For each such instance of the stream's
own workload the sidecar gets, over LDS and CDS beside the shared outbound resources:

    listener  inbound_<address>_<port>   bound on the instance's address and port
    cluster   inbound|<port>||           STATIC, 127.0.0.1:<app-port> (HTTP/2 for http2/grpc)

The listener's chains, when the pilot is a CA and the instance is labelled `tlsMode: istio`
(the label that makes callers' clusters originate mTLS to it, pilot/generate.py):

    strict (default)  one chain: TLS with the sidecar's SDS identity ("default"), a client
                      certificate required, issued by the pilot's root ("ROOTCA") for a
                      spiffe://<trust-domain>/ identity; a plaintext caller is refused
    permissive        tls_inspector; the same TLS chain for `transport_protocol: tls`, and a
                      plaintext chain for everything else (Istio's PERMISSIVE)

Other instances (no CA, or no `tlsMode: istio` label: their callers send plaintext) get the
plaintext chain only. HTTP ports (http, http2, grpc) get an HTTP connection manager whose
`x-forwarded-client-cert` says the verified caller (SANITIZE_SET, URI), the rest tcp_proxy.

An access policy of the service (pilot/policy.py, `allow_from`) becomes RBAC on the chains:
on a TLS chain the callers' SPIFFE identities (`authenticated.principal_name`: each allowed
service's instances' namespace and `serviceAccount` label, else `ns/default/sa/<service>`,
the identity its sidecar is issued), on a plaintext chain their registered addresses.

Which instances are the stream's: a sidecar's Istio node id `sidecar~<ip>~<pod>.<ns>~...`
and its node `cluster` (the service, or `<service>.<ns>`): the service's instances at that
IP; of those, the pod's own when some are named after it (the instance id is the pod name,
or `<pod>:<anything>`, one instance per port), for pods that share an IP.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from sofamesh.pilot.capture import (
    CAPTURE_PORT,
    build_virtual_inbound,
    capture_clusters,
    captured,
)
from sofamesh.pilot.generate import CDS, LDS, TLS_MODE, Generator, Resource, _res
from sofamesh.pilot.inbound_chains import (
    MODES,
    caller_identities,
    inbound_cluster,
    port_chains,
    tls_inspector,
)
from sofamesh.pilot.model import Instance

log = logging.getLogger("sofamesh.pilot.inbound")

APP_PORT = "sofamesh.io/app-port"
_MEMO_MAX = 4096

Extra = dict[str, dict[str, Resource]]  # type url -> name -> Resource


def app_port(inst: Instance, default: int | None = None) -> int | None:
    """The instance's `sofamesh.io/app-port` label as a port; without the label `default`;
    a label that is not a port: None."""
    raw = inst.label_dict.get(APP_PORT)
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def build_inbound(
    inst: Instance,
    app: int,
    tls_domain: str,
    mode: str,
    pol: Any,
    ids: tuple[str, ...],
) -> tuple[listener_pb2.Listener, cluster_pb2.Cluster]:
    """tls_domain: the trust domain when the chain takes mTLS, else "" (plaintext only)."""
    prefix = f"inbound_{inst.address}_{inst.port}"
    lst = listener_pb2.Listener(name=prefix)
    lst.address.socket_address.address = inst.address
    lst.address.socket_address.port_value = inst.port
    lst.filter_chains.extend(port_chains(inst, tls_domain, mode, pol, ids, prefix))
    if any(fc.filter_chain_match.transport_protocol for fc in lst.filter_chains):
        lst.listener_filters.append(tls_inspector())
    return lst, inbound_cluster(inst, app)


class InboundBuilder:
    """Attached to an AdsServer as `ads.inbound`: each sidecar stream's own resources."""

    def __init__(self, gen: Generator, mode: str = "strict", metrics: Any = None):
        if mode not in MODES:
            raise ValueError(f"mTLS mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.gen = gen
        self.mode = mode
        self.metrics = metrics
        self._memo: dict[tuple, Extra] = {}

    def instances(self, conn: Any, capture: bool = False) -> list[Instance]:
        """The instances whose calls this stream's sidecar takes: those with an app port,
        or under capture all of the workload's."""
        info = conn.node_info
        if not info or info["type"] != "sidecar":
            return []
        names = [conn.node_cluster]
        base, dot, ns = conn.node_cluster.rpartition(".")
        if dot and ns == info["namespace"]:
            names.append(base)
        for name in names:
            so = self.gen.services.get(name)
            if so is None:
                continue
            mine = [
                i
                for i in so.key[1]
                if i.address == info["ip"] and (capture or app_port(i) is not None)
            ]
            pod, per_port = info["pod"], info["pod"] + ":"
            ours = [i for i in mine if i.instance_id == pod or i.instance_id.startswith(per_port)]
            return ours or mine
        return []

    def resources(self, conn: Any) -> Extra:
        capture = captured(conn) and bool(conn.node_info) and conn.node_info["type"] == "sidecar"
        insts = self.instances(conn, capture)
        if not insts and not capture:
            return {}
        gen = self.gen
        pol = gen.policies.get(insts[0].service) if insts else None
        ids = caller_identities(gen, pol) if pol is not None and gen.trust_domain else ()
        key = (capture, tuple(insts), pol, ids, gen.trust_domain, self.mode)
        got = self._memo.get(key)
        if got is not None:
            return got
        out: Extra = {LDS: {}, CDS: {}}
        ports: list[tuple[Instance, str]] = []
        seen: set[int] = set()
        for inst in sorted(insts, key=lambda i: i.port):
            app = app_port(inst, inst.port if capture else None)
            if app is None or inst.port in seen:
                continue
            if capture and inst.port == CAPTURE_PORT:
                log.warning("%s: port %d is the capture port: no inbound chain", inst, inst.port)
                continue
            seen.add(inst.port)
            tls = gen.trust_domain if inst.label_dict.get(TLS_MODE) == "istio" else ""
            if capture:
                ports.append((inst, tls))
                cl = inbound_cluster(inst, app)
            else:
                lst, cl = build_inbound(inst, app, tls, self.mode, pol, ids)
                out[LDS][lst.name] = _res(lst.name, LDS, lst)
            out[CDS][cl.name] = _res(cl.name, CDS, cl)
        if capture:
            # ports the mesh does not know: mTLS as the workload's (any instance labelled
            # for it, or no instance known yet: an injected sidecar is), when a CA signs
            tls_any = not insts or any(i.label_dict.get(TLS_MODE) == "istio" for i in insts)
            lst = build_virtual_inbound(
                ports, gen.trust_domain if tls_any else "", self.mode, pol, ids
            )
            out[LDS][lst.name] = _res(lst.name, LDS, lst)
            for cl in capture_clusters():
                out[CDS][cl.name] = _res(cl.name, CDS, cl)
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = out
        return out


def digest(extra: Extra, t: str) -> str:
    """A suffix for a SotW version_info that covers a stream's own resources of type t."""
    mine = extra.get(t)
    if not mine:
        return ""
    h = hashlib.blake2b(digest_size=6)
    for n in sorted(mine):
        h.update(mine[n].version.encode())
    return "-" + h.hexdigest()
