"""Quotas for Dubbo and Bolt calls by service and method: entries of a DubboProxy's
`dubbo_filters` / BoltProxy's `bolt_filters`, before the router (Envoy has no counterpart).

    dubbo_filters:
      - name: sofamesh.filters.rpc.local_ratelimit      # token buckets in this proxy
        config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: dubbo_quota                      # <stat_prefix>.rpc_local_rate_limit.*
          descriptors:                                  # the first whose entries all match
            - entries: [{key: service, value: com.acme.Greeter}, {key: method, value: hello}]
              token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s}
          token_bucket: {...}                           # any other call (optional)
      - name: sofamesh.filters.rpc.rate_limit_quota     # a global quota through an RLQS server
        config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig
          rlqs_server: {envoy_grpc: {cluster_name: mixer}}
          domain: sofamesh
          bucket_matchers: ...   # as envoy.filters.http.rate_limit_quota: one matcher_list
                                 # matcher over HttpRequestHeaderMatchInput `:service` /
                                 # `:method` / `:version` / `:group`, or on_no_match
      - name: envoy.filters.dubbo.router

The local filter is Envoy's LocalRateLimit message read the RPC way: a descriptor's entry
keys are the call's route keys (`service`, `method`, `version`, `group`), each with the exact
`value` it must have; its `token_bucket` (else the filter's) limits those calls. Each bucket
is shared by the `--concurrency` workers (the shared region of _core/ratelimit.pyx, as
envoy.filters.http.local_ratelimit). The RLQS filter is the HTTP filter's config and client:
a bucket id such as `{service: X}` is the same bucket whether HTTP requests or RPC calls
fill it, so one global quota covers both. A call over a quota gets the protocol's own error
reply with its request id (Bolt SERVER_THREADPOOL_BUSY, Dubbo SERVER_THREADPOOL_EXHAUSTED
"rate limited"), counted in `<prefix>.rpc_local_rate_limit.{ok,rate_limited}` /
`<proto>.<stat_prefix>.rpc_rate_limit_quota.{ok,rate_limited}`. Refused by path: filter
`filter_enabled`/`filter_enforced` fractions, per-connection buckets, descriptor entries of
other keys or without a value, header inputs other than the four route keys.
"""

from __future__ import annotations

from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

LOCAL = "sofamesh.filters.rpc.local_ratelimit"
RLQS = "sofamesh.filters.rpc.rate_limit_quota"
NAMES = (LOCAL, RLQS)
ROUTE_KEYS = ("service", "method", "version", "group")
_LOCAL_URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_RLQS_URL = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaFilterConfig"
)


def _bucket(tb: Any, key: str, path: str) -> Any:
    from sofamesh._core.ratelimit import TokenBucket, shared_region

    interval = tb.fill_interval.seconds + tb.fill_interval.nanos / 1e9
    if interval <= 0 or tb.max_tokens == 0:
        raise UnsupportedConfig(f"{path}: max_tokens and fill_interval must be > 0")
    per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
    return TokenBucket(tb.max_tokens, per_fill, interval, region=shared_region(), key=key)


def _keys_rule(entries: Any, path: str) -> Any:
    """The calls whose route keys have these exact values (an RBAC rule: rbac.pxd)."""
    from envoy.config.route.v3 import route_components_pb2

    from sofamesh._core import rbac as C
    from sofamesh.filters.http.rbac import _Compiler

    if not entries:
        raise UnsupportedConfig(f"{path}: at least one entry is needed")
    rules = []
    for i, e in enumerate(entries):
        epath = f"{path}[{i}]"
        if e.key not in ROUTE_KEYS:
            raise UnsupportedConfig(f"{epath}.key: one of {', '.join(ROUTE_KEYS)}, got {e.key!r}")
        if not e.value:
            raise UnsupportedConfig(f"{epath}.value: required (the exact {e.key})")
        hm = route_components_pb2.HeaderMatcher(name=f":{e.key}")
        hm.string_match.exact = e.value
        rules.append(_Compiler()._header(hm, epath))
    return rules[0] if len(rules) == 1 else C.AndRule(rules)


def _local(config: Any, store: Any, path: str) -> Any:
    from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

    from sofamesh._core.rpc_quota import RpcQuotaRule, RpcQuotaStage

    msg = local_rate_limit_pb2.LocalRateLimit()
    if config.type_url != _LOCAL_URL or not config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {_LOCAL_URL}")
    for f in ("filter_enabled", "filter_enforced", "status", "always_consume_default_token_bucket"):
        if msg.HasField(f):
            raise UnsupportedConfig(f"{path}.{f} is not implemented for RPC calls by sofamesh")
    if msg.local_rate_limit_per_downstream_connection:
        raise UnsupportedConfig(
            f"{path}.local_rate_limit_per_downstream_connection is not implemented for RPC"
        )
    if not msg.stat_prefix:
        raise UnsupportedConfig(f"{path}.stat_prefix: required")
    rules = []
    for i, d in enumerate(msg.descriptors):
        dpath = f"{path}.descriptors[{i}]"
        if not d.HasField("token_bucket"):
            raise UnsupportedConfig(f"{dpath}.token_bucket: required")
        rules.append(
            RpcQuotaRule(
                _keys_rule(d.entries, f"{dpath}.entries"),
                _bucket(d.token_bucket, dpath, f"{dpath}.token_bucket"),
            )
        )
    if msg.HasField("token_bucket"):
        rules.append(RpcQuotaRule(None, _bucket(msg.token_bucket, path, f"{path}.token_bucket")))
    if not rules:
        raise UnsupportedConfig(f"{path}: a token_bucket or descriptors are needed")
    return RpcQuotaStage(rules, store, msg.stat_prefix, "rpc_local_rate_limit")


def _rlqs(config: Any, ctx: dict, stat_base: str, path: str) -> Any:
    from sofamesh._core.rpc_quota import RpcQuotaRule, RpcQuotaStage
    from sofamesh.filters.http import rate_limit_quota

    if config.type_url != _RLQS_URL:
        raise UnsupportedConfig(f"{path}: expected {_RLQS_URL}")
    names: set[str] = set()
    flt = rate_limit_quota.factory(
        config,
        {**ctx, "path": path[: -len(".config")], "name": RLQS, "header_names": names},
    )
    bad = sorted(n for n in names if n not in {f":{k}" for k in ROUTE_KEYS})
    if bad:
        raise UnsupportedConfig(
            f"{path}.bucket_matchers: RPC calls are matched by :service, :method, :version, "
            f":group; not {', '.join(bad)}"
        )
    rule = RpcQuotaRule(flt.match, rlqs=flt)
    return RpcQuotaStage([rule], ctx["stats"], stat_base, "rpc_rate_limit_quota")


def build_rpc_quota(filters: Any, ctx: dict, stat_base: str, path: str) -> Any:
    """The RpcQuota of a dubbo_filters / bolt_filters list (its quota entries, in order), or
    None when it has none: then the proxy's hot path pays one pointer test."""
    from sofamesh._core.rpc_quota import RpcQuota

    stages = []
    for i, f in enumerate(filters):
        fpath = f"{path}[{i}].config"
        if f.name == LOCAL:
            stages.append(_local(f.config, ctx["stats"], fpath))
        elif f.name == RLQS:
            stages.append(_rlqs(f.config, ctx, stat_base, fpath))
    return RpcQuota(stages) if stages else None


def _register() -> None:
    from sofamesh.config.support import register_extension

    # the filters' configs are these messages in Anys that config validation walks
    register_extension(_LOCAL_URL, __name__)
    register_extension(_RLQS_URL, __name__)


_register()
