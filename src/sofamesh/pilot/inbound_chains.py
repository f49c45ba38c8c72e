"""The filter chains and the cluster that take a sidecar's inbound calls for one instance
port: shared by the per-address inbound listeners (pilot/inbound.py) and the traffic-capture
listener `virtualInbound` (pilot/capture.py), so both forms take a call the same way.

Per port, by the instance's mTLS (a trust domain, else "": plaintext) and the pilot's mode:

    plaintext         one chain, no TLS
    strict            one chain: TLS with the sidecar's SDS identity ("default"), a client
                      certificate of the pilot's root ("ROOTCA") required
    permissive        two: that TLS chain for `transport_protocol: tls`, the plaintext one
                      for `raw_buffer` (the listener needs a tls_inspector)

HTTP ports (http, http2, grpc) get an HTTP connection manager whose x-forwarded-client-cert
says the verified caller (SANITIZE_SET, URI), the rest tcp_proxy; an access policy becomes
RBAC on each chain: by SPIFFE identity on TLS, by registered address on plaintext.
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_cfg
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
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
    H2_PROTOCOLS,
    HTTP_PROTOCOLS,
    Generator,
    _ads,
    _any,
    mesh_tls_params,
    service_sans,
)
from sofamesh.pilot.model import Instance
from sofamesh.pilot.policy import Resolved
from sofamesh.pilot.policy_xds import RBAC_HTTP, RBAC_NET

_T = "type.googleapis.com/"
_TLS_DOWN_URL = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_RBAC_URL = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_NET_URL = _T + "envoy.extensions.filters.network.rbac.v3.RBAC"
_INSPECTOR_URL = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
MODES = ("strict", "permissive")


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


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


def tls_socket(trust_domain: str, http: bool, h2: bool) -> base_pb2.TransportSocket:
    """Mutual TLS with the sidecar's SDS identity; the caller's certificate of the pilot's
    root, for an identity of `trust_domain`, is required."""
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
    ts = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    ts.typed_config.CopyFrom(_any(_TLS_DOWN_URL, ctx))
    return ts


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    lf = listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR)
    lf.typed_config.CopyFrom(_any(_INSPECTOR_URL, tls_inspector_pb2.TlsInspector()))
    return lf


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


def tcp_filters(
    stat_prefix: str, cluster: str, pol: Resolved | None, ids: tuple[str, ...] | None
) -> list[listener_components_pb2.Filter]:
    """[network RBAC when the policy names callers,] tcp_proxy to `cluster`; ids None: the
    chain is plaintext and RBAC goes by the callers' addresses."""
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


def tls_variants(tls_domain: str, mode: str) -> list[tuple[bool, str]]:
    """The chains a port gets as (takes TLS, transport_protocol to match or "")."""
    if not tls_domain:
        return [(False, "")]
    if mode == "strict":
        return [(True, "")]
    return [(True, "tls"), (False, "raw_buffer")]


def port_chains(
    inst: Instance,
    tls_domain: str,
    mode: str,
    pol: Resolved | None,
    ids: tuple[str, ...],
    stat_prefix: str,
) -> list[listener_components_pb2.FilterChain]:
    """The chains taking calls for `inst`'s port to its cluster `inbound|<port>||`;
    tls_domain: the trust domain when they take mTLS, else "" (plaintext only)."""
    cname = inbound_cluster_name(inst.port)
    http = inst.protocol in HTTP_PROTOCOLS
    h2 = inst.protocol in H2_PROTOCOLS
    out = []
    for tls, transport in tls_variants(tls_domain, mode):
        fc = listener_components_pb2.FilterChain(name=f"{cname}{'tls' if tls else 'plaintext'}")
        who = ids if tls else None
        if http:
            fc.filters.append(_http_filter(stat_prefix, cname, pol, who))
        else:
            fc.filters.extend(tcp_filters(stat_prefix, cname, pol, who))
        if tls:
            fc.transport_socket.CopyFrom(tls_socket(tls_domain, http, h2))
        if transport:
            fc.filter_chain_match.transport_protocol = transport
        out.append(fc)
    return out


def inbound_cluster(inst: Instance, app: int) -> cluster_pb2.Cluster:
    """`inbound|<port>||`: STATIC, the application at 127.0.0.1:<app> (HTTP/2 for http2/grpc)."""
    cname = inbound_cluster_name(inst.port)
    c = cluster_pb2.Cluster(name=cname, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.FromSeconds(10)
    c.load_assignment.cluster_name = cname
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", app
    if inst.protocol in H2_PROTOCOLS:
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(_any(_H2_OPTS_URL, opts))
    return c
