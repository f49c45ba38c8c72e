"""Inbound listeners per sidecar: the pilot tells each sidecar how to take calls for its own
instances, with mutual TLS by default (Istio's ingress listener with a default endpoint,
its Sidecar resource's `ingress` without traffic capture, and its PeerAuthentication).

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
import ipaddress
import logging
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_cfg
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_net
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from sofamesh.pilot.generate import (
    _H2_OPTS_URL,
    _HCM_URL,
    _ROUTER_URL,
    _TCP_URL,
    CDS,
    H2_PROTOCOLS,
    HTTP_PROTOCOLS,
    LDS,
    TLS_MODE,
    Generator,
    Resource,
    _ads,
    _any,
    _res,
    mesh_tls_params,
    service_sans,
)
from sofamesh.pilot.model import Instance
from sofamesh.pilot.policy import Resolved
from sofamesh.pilot.policy_xds import RBAC_HTTP, RBAC_NET

log = logging.getLogger("sofamesh.pilot.inbound")

APP_PORT = "sofamesh.io/app-port"
MODES = ("strict", "permissive")
_T = "type.googleapis.com/"
_TLS_DOWN_URL = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_RBAC_URL = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_NET_URL = _T + "envoy.extensions.filters.network.rbac.v3.RBAC"
_INSPECTOR_URL = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
_MEMO_MAX = 4096

Extra = dict[str, dict[str, Resource]]  # type url -> name -> Resource


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


def app_port(inst: Instance) -> int | None:
    """The instance's `sofamesh.io/app-port` label as a port, else None."""
    raw = inst.label_dict.get(APP_PORT)
    if raw is None:
        return None
    try:
        port = int(raw)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def caller_identities(gen: Generator, pol: Resolved) -> tuple[str, ...]:
    """The SPIFFE ids of the services an access policy allows."""
    out: set[str] = set()
    for name in pol.allow_from:
        so = gen.services.get(name)
        insts = list(so.key[1]) if so is not None else []
        out.update(
            service_sans(gen.trust_domain, name, insts)
            if insts
            else [f"spiffe://{gen.trust_domain}/ns/default/sa/{name}"]
        )
    return tuple(sorted(out))


def _rules(pol: Resolved, identities: tuple[str, ...] | None) -> rbac_cfg.RBAC:
    """ALLOW the allowed callers: by identity (TLS chain) or by address (plaintext chain)."""
    rules = rbac_cfg.RBAC(action=rbac_cfg.RBAC.ALLOW)
    p = rbac_cfg.Policy()
    p.permissions.add().any = True
    if identities is not None:
        for sid in identities:
            p.principals.add().authenticated.principal_name.exact = sid
    else:
        for ip in pol.allow_ips or ():
            cidr = p.principals.add().direct_remote_ip
            cidr.address_prefix = ip
            cidr.prefix_len.value = 32 if ipaddress.ip_address(ip).version == 4 else 128
    if p.principals:  # none: an ALLOW without policies denies everything
        rules.policies[f"allow-from:{','.join(pol.allow_from)}"].CopyFrom(p)
    return rules


def _tls_socket(trust_domain: str, http: bool, h2: bool) -> Any:
    ctx = tls_pb2.DownstreamTlsContext()
    ctx.require_client_certificate.value = True
    common = ctx.common_tls_context
    mesh_tls_params(common)
    cert = common.tls_certificate_sds_secret_configs.add(name="default")
    cert.sds_config.CopyFrom(_ads())
    cvc = common.combined_validation_context
    m = cvc.default_validation_context.match_typed_subject_alt_names.add()
    m.san_type = 3  # URI: an identity of this trust domain
    m.matcher.prefix = f"spiffe://{trust_domain}/"
    cvc.validation_context_sds_secret_config.name = "ROOTCA"
    cvc.validation_context_sds_secret_config.sds_config.CopyFrom(_ads())
    if http:  # (TCP and RPC ports: no ALPN, as the callers' clusters offer none)
        common.alpn_protocols.extend(["h2", "http/1.1"] if h2 else ["http/1.1"])
    from envoy.config.core.v3 import base_pb2

    ts = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    ts.typed_config.CopyFrom(_any(_TLS_DOWN_URL, ctx))
    return ts


def _http_filter(
    stat_prefix: str, cluster: str, pol: Resolved | None, ids: tuple[str, ...] | None
) -> listener_components_pb2.Filter:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    # the application learns who called, and nobody can claim it over plaintext
    hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
    hcm.set_current_client_cert_details.uri = True
    rc = hcm.route_config
    rc.name = cluster
    vh = rc.virtual_hosts.add(name=cluster, domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster
    r.route.timeout.FromSeconds(0)  # the caller's sidecar keeps the route's timeout
    if pol is not None and pol.allow_from:
        f = hcm.http_filters.add(name=RBAC_HTTP)
        f.typed_config.CopyFrom(_any(_RBAC_URL, rbac_http.RBAC(rules=_rules(pol, ids))))
    f = hcm.http_filters.add(name="envoy.filters.http.router")
    f.typed_config.CopyFrom(_any(_ROUTER_URL, router_pb2.Router()))
    out = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    out.typed_config.CopyFrom(_any(_HCM_URL, hcm))
    return out


def _tcp_filters(
    stat_prefix: str, cluster: str, pol: Resolved | None, ids: tuple[str, ...] | None
) -> list[listener_components_pb2.Filter]:
    out = []
    if pol is not None and pol.allow_from:
        f = listener_components_pb2.Filter(name=RBAC_NET)
        msg = rbac_net.RBAC(stat_prefix=stat_prefix, rules=_rules(pol, ids))
        f.typed_config.CopyFrom(_any(_RBAC_NET_URL, msg))
        out.append(f)
    f = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy")
    f.typed_config.CopyFrom(
        _any(_TCP_URL, tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster))
    )
    out.append(f)
    return out


def build_inbound(
    inst: Instance,
    app: int,
    tls_domain: str,
    mode: str,
    pol: Resolved | None,
    ids: tuple[str, ...],
) -> tuple[listener_pb2.Listener, cluster_pb2.Cluster]:
    """tls_domain: the trust domain when the chain takes mTLS, else "" (plaintext only)."""
    cname = inbound_cluster_name(inst.port)
    http = inst.protocol in HTTP_PROTOCOLS
    h2 = inst.protocol in H2_PROTOCOLS
    c = cluster_pb2.Cluster(name=cname, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.FromSeconds(10)
    c.load_assignment.cluster_name = cname
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", app
    if h2:
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(_any(_H2_OPTS_URL, opts))
    lst = listener_pb2.Listener(name=f"inbound_{inst.address}_{inst.port}")
    lst.address.socket_address.address = inst.address
    lst.address.socket_address.port_value = inst.port
    prefix = f"inbound_{inst.address}_{inst.port}"

    def chain(tls: bool) -> listener_components_pb2.FilterChain:
        fc = listener_components_pb2.FilterChain(name=f"{cname}{'tls' if tls else 'plaintext'}")
        who = ids if tls else None
        if http:
            fc.filters.append(_http_filter(prefix, cname, pol, who))
        else:
            fc.filters.extend(_tcp_filters(prefix, cname, pol, who))
        if tls:
            fc.transport_socket.CopyFrom(_tls_socket(tls_domain, http, h2))
        return fc

    if not tls_domain:
        lst.filter_chains.append(chain(False))
    elif mode == "strict":
        lst.filter_chains.append(chain(True))
    else:
        lf = lst.listener_filters.add(name="envoy.filters.listener.tls_inspector")
        from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

        lf.typed_config.CopyFrom(_any(_INSPECTOR_URL, tls_inspector_pb2.TlsInspector()))
        tls = chain(True)
        tls.filter_chain_match.transport_protocol = "tls"
        plain = chain(False)
        plain.filter_chain_match.transport_protocol = "raw_buffer"
        lst.filter_chains.extend([tls, plain])
    return lst, c


class InboundBuilder:
    """Attached to an AdsServer as `ads.inbound`: each sidecar stream's own resources."""

    def __init__(self, gen: Generator, mode: str = "strict", metrics: Any = None):
        if mode not in MODES:
            raise ValueError(f"mTLS mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.gen = gen
        self.mode = mode
        self.metrics = metrics
        self._memo: dict[tuple, Extra] = {}

    def instances(self, conn: Any) -> list[Instance]:
        """The instances whose calls this stream's sidecar takes (with an app port)."""
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
            mine = [i for i in so.key[1] if i.address == info["ip"] and app_port(i)]
            pod, per_port = info["pod"], info["pod"] + ":"
            ours = [i for i in mine if i.instance_id == pod or i.instance_id.startswith(per_port)]
            return ours or mine
        return []

    def resources(self, conn: Any) -> Extra:
        insts = self.instances(conn)
        if not insts:
            return {}
        gen = self.gen
        pol = gen.policies.get(insts[0].service)
        ids = caller_identities(gen, pol) if pol is not None and gen.trust_domain else ()
        key = (tuple(insts), pol, ids, gen.trust_domain, self.mode)
        got = self._memo.get(key)
        if got is not None:
            return got
        out: Extra = {LDS: {}, CDS: {}}
        seen: set[int] = set()
        for inst in sorted(insts, key=lambda i: i.port):
            app = app_port(inst)
            if app is None or inst.port in seen:
                continue
            seen.add(inst.port)
            tls = gen.trust_domain if inst.label_dict.get(TLS_MODE) == "istio" else ""
            lst, cl = build_inbound(inst, app, tls, self.mode, pol, ids)
            out[LDS][lst.name] = _res(lst.name, LDS, lst)
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
