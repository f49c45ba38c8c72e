"""Operator policies (pilot/policy.py) as Envoy v3 config in the listeners the pilot pushes.

Access ("X accepts calls only from Y"): the outbound HTTP connection manager carries an
`envoy.filters.http.rbac` filter without rules (it checks nothing by itself) and X's virtual
host an RBACPerRoute: ALLOW when the connection comes from an address of one of Y's
registered instances (`direct_remote_ip`: the caller's application connects to its own
sidecar from the address it registered). Anything else gets Envoy's 403 `RBAC: access
denied`. X's TCP/RPC listeners get `envoy.filters.network.rbac` with the same principals
(a denied connection is closed). The filters appear only once some policy needs them, so a
mesh without access policies pays nothing.

Rate ("X takes at most R requests/s in total"): one `envoy.filters.http.rate_limit_quota`
filter per limited service, named `sofamesh.quota.<X>`, whose bucket matcher selects the
requests for X by `:authority` (X or X:port) into the bucket `{service: X}` of domain
`sofamesh`; `sofamesh mixer --pilot` learns R from the pilot and shares it among all the
sidecars that report demand. Until the mixer answers (or when it is gone), each sidecar
allows R/s on its own (no_assignment_behavior).
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_cfg
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as rlq
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_net
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2
from xds.type.matcher.v3 import matcher_pb2

from sofamesh.pilot.policy import Resolved

RBAC_HTTP = "envoy.filters.http.rbac"
RBAC_NET = "envoy.filters.network.rbac"
MIXER_CLUSTER = "sofamesh-mixer"
QUOTA_DOMAIN = "sofamesh"
_T = "type.googleapis.com/"
_RBAC_URL = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_ROUTE_URL = _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
_RBAC_NET_URL = _T + "envoy.extensions.filters.network.rbac.v3.RBAC"
_RLQ_URL = _T + "envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig"
_RLQ_BUCKET_URL = (
    _T + "envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaBucketSettings"
)
_HEADER_INPUT_URL = _T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_H2_OPTS_URL = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _any(url: str, msg) -> any_pb2.Any:
    return any_pb2.Any(type_url=url, value=msg.SerializeToString(deterministic=True))


def access_rules(pol: Resolved) -> rbac_cfg.RBAC:
    """ALLOW from the allowed services' addresses; with none registered, nobody (an ALLOW
    RBAC without policies denies everything)."""
    rules = rbac_cfg.RBAC(action=rbac_cfg.RBAC.ALLOW)
    if pol.allow_ips:
        p = rules.policies[f"allow-from:{','.join(pol.allow_from)}"]
        p.permissions.add().any = True
        for ip in pol.allow_ips:
            cidr = p.principals.add().direct_remote_ip
            cidr.address_prefix = ip
            cidr.prefix_len.value = 32 if ipaddress.ip_address(ip).version == 4 else 128
    return rules


def vhost_access(pol: Resolved) -> tuple[str, any_pb2.Any]:
    """X's virtual host `typed_per_filter_config` entry."""
    return RBAC_HTTP, _any(
        _RBAC_ROUTE_URL, rbac_http.RBACPerRoute(rbac=rbac_http.RBAC(rules=access_rules(pol)))
    )


def add_rbac_filter(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """The HCM's RBAC filter: no rules of its own (virtual hosts carry them)."""
    f = hcm.http_filters.add()
    f.name = RBAC_HTTP
    f.typed_config.CopyFrom(_any(_RBAC_URL, rbac_http.RBAC()))


def network_rbac(stat_prefix: str, pol: Resolved) -> listener_components_pb2.Filter:
    f = listener_components_pb2.Filter(name=RBAC_NET)
    msg = rbac_net.RBAC(stat_prefix=stat_prefix, rules=access_rules(pol))
    f.typed_config.CopyFrom(_any(_RBAC_NET_URL, msg))
    return f


def _authority(value_match) -> matcher_pb2.Matcher.MatcherList.Predicate:
    pred = matcher_pb2.Matcher.MatcherList.Predicate()
    sp = pred.single_predicate
    sp.input.name = "authority"
    sp.input.typed_config.CopyFrom(
        _any(
            _HEADER_INPUT_URL, http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":authority")
        )
    )
    sp.value_match.CopyFrom(value_match)
    return pred


def add_quota_filter(hcm: hcm_pb2.HttpConnectionManager, service: str, rps: int) -> None:
    """The rate_limit_quota filter of one limited service (requests for other services do
    not match its bucket matcher and pass it uncounted)."""
    from xds.type.matcher.v3 import string_pb2

    settings = rlq.RateLimitQuotaBucketSettings()
    settings.bucket_id_builder.bucket_id_builder["service"].string_value = service
    settings.reporting_interval.FromSeconds(1)
    tb = settings.no_assignment_behavior.fallback_rate_limit.token_bucket
    tb.max_tokens = rps
    tb.tokens_per_fill.value = rps
    tb.fill_interval.FromSeconds(1)
    cfg = rlq.RateLimitQuotaFilterConfig(domain=QUOTA_DOMAIN)
    cfg.rlqs_server.envoy_grpc.cluster_name = MIXER_CLUSTER
    m = cfg.bucket_matchers.matcher_list.matchers.add()
    either = m.predicate.or_matcher
    either.predicate.append(_authority(string_pb2.StringMatcher(exact=service, ignore_case=True)))
    either.predicate.append(
        _authority(string_pb2.StringMatcher(prefix=f"{service}:", ignore_case=True))
    )
    m.on_match.action.name = "bucket"
    m.on_match.action.typed_config.CopyFrom(_any(_RLQ_BUCKET_URL, settings))
    f = hcm.http_filters.add()
    f.name = f"sofamesh.quota.{service}"
    f.typed_config.CopyFrom(_any(_RLQ_URL, cfg))


def mixer_cluster(host: str, port: int) -> cluster_pb2.Cluster:
    """`--mixer HOST:PORT` as a static HTTP/2 cluster for the RLQS streams."""
    c = cluster_pb2.Cluster(name=MIXER_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.FromSeconds(1)
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    c.load_assignment.cluster_name = MIXER_CLUSTER
    sa.address = host
    sa.port_value = port
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    opts.explicit_http_config.http2_protocol_options.SetInParent()
    c.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(_any(_H2_OPTS_URL, opts))
    return c
