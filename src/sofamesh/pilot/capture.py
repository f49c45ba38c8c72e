"""The traffic-capture form of a sidecar's inbound (Istio's `virtualInbound`): iptables in
the workload's network namespace REDIRECTs every inbound TCP connection to the sidecar's
port 15006, the applications keep listening on their real ports, and one listener takes
every call, its filter chain chosen by the connection's original destination port.

Opt-in per sidecar by its ADS node metadata `INTERCEPTION_MODE: REDIRECT`, the key and value
Istio's pilot reads (`Proxy.GetInterceptionMode`: REDIRECT, TPROXY or NONE). Istio takes a
missing key as REDIRECT; here a missing key (or NONE, or TPROXY, whose `transparent`
listener sofamesh's proxy does not implement) keeps the per-address listeners of
pilot/inbound.py, so sidecars that never asked for capture see no change.

What a captured sidecar gets, over LDS and CDS beside the shared outbound resources:

    listener  virtualInbound     0.0.0.0:15006, traffic_direction INBOUND; listener filters
                                 original_dst (the chains see the port the caller dialled)
                                 and, when chains match on transport protocol (permissive),
                                 tls_inspector
      chain   virtualInbound-blackhole       destination_port 15006: BlackHoleCluster (a
                                             connection dialled to 15006 itself would else
                                             be passed through to 15006 again, a loop)
      chains  inbound|<port>||tls/plaintext  destination_port <port>, one set per instance
                                             port of the sidecar's own workload: the chains
                                             of pilot/inbound_chains.py (strict, permissive
                                             or plaintext; HCM with XFCC or tcp_proxy; RBAC)
      chains  virtualInbound-passthrough-*   no port: every other port, tcp_proxy to
                                             InboundPassthroughCluster
    cluster   inbound|<port>||              STATIC, 127.0.0.1:<app port>: the instance's
                                            `sofamesh.io/app-port` label, else its own port
    cluster   InboundPassthroughCluster     ORIGINAL_DST (CLUSTER_PROVIDED): the address the
                                            caller dialled
    cluster   BlackHoleCluster              STATIC, no endpoints

Every instance of the workload gets its chains (no `sofamesh.io/app-port` label needed),
but one on port 15006 itself (the black hole's). A captured sidecar whose workload has no
instance registered yet still gets the listener, with the black hole and passthrough only:
the redirect lands on 15006 whatever the registry says.

Ports the mesh does not know: as Istio, a passthrough to the original destination, so an
application port that is not registered keeps working under capture, but with the same
peer authentication as the known ports (strict: mTLS from a mesh identity required;
permissive: mTLS or plaintext; no CA, or instances none of which is labelled
`tlsMode: istio`: plaintext; no instance yet: as an injected sidecar, the mesh's mTLS)
and the service's access policy (network RBAC: these chains are tcp_proxy, so no XFCC).
It is sound with Istio's PREROUTING REDIRECT: the sidecar's own connection to the pod's
address is local output, which that rule does not capture. As Istio's, the passthrough's
upstream connections are bound to 127.0.0.6 (`upstream_bind_config`), so that a node's OUTPUT
rules can tell them from the application's own traffic (Istio's `-s 127.0.0.6 -o lo`
exception); the application sees such calls come from 127.0.0.6.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2

from sofamesh.pilot.generate import _any
from sofamesh.pilot.inbound_chains import (
    port_chains,
    tcp_filters,
    tls_inspector,
    tls_socket,
    tls_variants,
)
from sofamesh.pilot.model import Instance
from sofamesh.pilot.policy import Resolved

INTERCEPTION_MODE = "INTERCEPTION_MODE"  # ADS node metadata key, as Istio's
REDIRECT = "REDIRECT"
VIRTUAL_INBOUND = "virtualInbound"
CAPTURE_PORT = 15006  # Istio's ProxyInboundListenPort
PASSTHROUGH = "InboundPassthroughCluster"
PASSTHROUGH_BIND = "127.0.0.6"
BLACKHOLE = "BlackHoleCluster"
ORIGINAL_DST = "envoy.filters.listener.original_dst"
_ORIGINAL_DST_URL = (
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)


def captured(conn: Any) -> bool:
    """Whether the stream's node asked for traffic capture (`INTERCEPTION_MODE: REDIRECT`)."""
    md = getattr(conn, "metadata", None)
    return isinstance(md, dict) and md.get(INTERCEPTION_MODE) == REDIRECT


def _blackhole_chain() -> listener_components_pb2.FilterChain:
    fc = listener_components_pb2.FilterChain(name=f"{VIRTUAL_INBOUND}-blackhole")
    fc.filter_chain_match.destination_port.value = CAPTURE_PORT
    fc.filters.extend(tcp_filters(BLACKHOLE, BLACKHOLE, None, None))
    return fc


def _passthrough_chains(
    tls_domain: str, mode: str, pol: Resolved | None, ids: tuple[str, ...]
) -> list[listener_components_pb2.FilterChain]:
    out = []
    for tls, transport in tls_variants(tls_domain, mode):
        fc = listener_components_pb2.FilterChain(
            name=f"{VIRTUAL_INBOUND}-passthrough-{'tls' if tls else 'plaintext'}"
        )
        fc.filters.extend(tcp_filters(PASSTHROUGH, PASSTHROUGH, pol, ids if tls else None))
        if tls:
            fc.transport_socket.CopyFrom(tls_socket(tls_domain, False, False))
        if transport:
            fc.filter_chain_match.transport_protocol = transport
        out.append(fc)
    return out


def capture_clusters() -> list[cluster_pb2.Cluster]:
    """The clusters the capture listener needs beside the ports' own `inbound|<port>||`."""
    passthrough = cluster_pb2.Cluster(
        name=PASSTHROUGH,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    passthrough.connect_timeout.FromSeconds(10)
    # Istio's InboundPassthroughBindIpv4: the sidecar's own connections to its pod's address
    # come from 127.0.0.6, which iptables can tell from the application's traffic
    passthrough.upstream_bind_config.source_address.address = PASSTHROUGH_BIND
    passthrough.upstream_bind_config.source_address.port_value = 0  # any (the oneof is set)
    blackhole = cluster_pb2.Cluster(name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC)
    blackhole.connect_timeout.FromSeconds(10)
    return [passthrough, blackhole]


def build_virtual_inbound(
    ports: list[tuple[Instance, str]],
    passthrough_tls: str,
    mode: str,
    pol: Resolved | None,
    ids: tuple[str, ...],
) -> listener_pb2.Listener:
    """`virtualInbound`; ports: (instance, its trust domain or "" for plaintext), one per
    port; passthrough_tls: the same for ports the mesh does not know."""
    lst = listener_pb2.Listener(
        name=VIRTUAL_INBOUND,
        traffic_direction=base_pb2.INBOUND,
        continue_on_listener_filters_timeout=True,  # as Istio: a server-first protocol
    )
    lst.address.socket_address.address = "0.0.0.0"
    lst.address.socket_address.port_value = CAPTURE_PORT
    lf = lst.listener_filters.add(name=ORIGINAL_DST)
    lf.typed_config.CopyFrom(_any(_ORIGINAL_DST_URL, original_dst_pb2.OriginalDst()))
    lst.filter_chains.append(_blackhole_chain())
    for inst, tls_domain in ports:
        for fc in port_chains(inst, tls_domain, mode, pol, ids, f"inbound_0.0.0.0_{inst.port}"):
            fc.filter_chain_match.destination_port.value = inst.port
            lst.filter_chains.append(fc)
    lst.filter_chains.extend(_passthrough_chains(passthrough_tls, mode, pol, ids))
    if any(fc.filter_chain_match.transport_protocol for fc in lst.filter_chains):
        lst.listener_filters.append(tls_inspector())
    return lst
