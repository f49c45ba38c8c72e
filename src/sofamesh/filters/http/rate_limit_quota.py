"""envoy.filters.http.rate_limit_quota: a global quota shared through an RLQS server
(`envoy.service.rate_limit_quota.v3`, e.g. `sofamesh mixer`), with no call per request.

Each request is decided locally in Cython (`_core/rlqs.pyx`) from the bucket's current action;
this module is the once-per-interval half: a usage report (allowed/denied since the last one)
every `reporting_interval` on one gRPC stream, the first one as soon as the bucket sees its
first request (as Envoy reports a new bucket), and the server's answers applied by swapping
the action: a token bucket (`_core/ratelimit.pyx`, private to the worker: with `--concurrency
N` each worker is an RLQS client of its own, and the server shares the limit among them as
among proxies), ALLOW_ALL / DENY_ALL, or an abandon. Until an assignment arrives,
`no_assignment_behavior` applies (ALLOW_ALL when unset); when one's `assignment_time_to_live`
passes, `expired_assignment_behavior` (fallback strategy or reuse of the last assignment, for
`expired_assignment_behavior_timeout`), then no_assignment_behavior again, as Envoy.

Implemented: `rlqs_server.envoy_grpc`, `domain`, `bucket_matchers` with one `on_no_match`
action (every request in one bucket) or a `matcher_list` of one matcher (its requests in the
bucket, the others pass uncounted, as Envoy passes a request no matcher selects) whose
predicate is request-header `single_predicate`s (`HttpRequestHeaderMatchInput`, a
`value_match` string matcher) under `or_matcher` / `and_matcher` / `not_matcher` (what the
pilot's rate policies generate), the bucket's `bucket_id_builder` entries `string_value`s,
`reporting_interval`, `deny_response_settings.{http_status, http_body,
response_headers_to_add}`, `no_assignment_behavior`, `expired_assignment_behavior`.
Refused by path: `matcher_list` / `matcher_tree` (request matching), `custom_value` bucket id
parts, `filter_enabled` / `filter_enforced`, `request_headers_to_add_when_not_enforced`,
`grpc_status` deny settings, `google_grpc`. `requests_per_time_unit` assignments allow all
(Envoy 1.40 does the same: "not yet supported").
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from sofamesh.filters.registry import FilterSpec, register

log = logging.getLogger("sofamesh.rate_limit_quota")

NAME = "envoy.filters.http.rate_limit_quota"
TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaFilterConfig"
)
SETTINGS_URL = (
    "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3"
    ".RateLimitQuotaBucketSettings"
)
_METHOD = "/envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas"


def _seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def _refuse(msg: Any, path: str, fields: tuple[str, ...]) -> None:
    from sofamesh.proxy.errors import UnsupportedConfig

    for f in fields:
        fd = msg.DESCRIPTOR.fields_by_name[f]
        if (fd.is_repeated and len(getattr(msg, f))) or (not fd.is_repeated and msg.HasField(f)):
            raise UnsupportedConfig(f"{path}.{f} is not implemented by sofamesh")


def compile_strategy(strategy: Any, path: str) -> Any:
    """envoy.type.v3.RateLimitStrategy -> RlqsAction. A token bucket of rate
    tokens_per_fill / fill_interval becomes one token per fill_interval / tokens_per_fill,
    capped at max_tokens (the same rate and burst as Envoy's continuous bucket)."""
    from sofamesh._core.ratelimit import TokenBucket
    from sofamesh._core.rlqs import ACTION_ALLOW_ALL, ACTION_DENY_ALL, ACTION_TOKENS, RlqsAction
    from sofamesh.proxy.errors import UnsupportedConfig

    which = strategy.WhichOneof("strategy")
    if which == "blanket_rule":
        return RlqsAction(ACTION_DENY_ALL if strategy.blanket_rule == 1 else ACTION_ALLOW_ALL)
    if which == "token_bucket":
        tb = strategy.token_bucket
        per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
        interval = _seconds(tb.fill_interval)
        if tb.max_tokens < 1 or per_fill < 1 or interval <= 0:
            raise UnsupportedConfig(
                f"{path}.token_bucket: max_tokens, tokens_per_fill and fill_interval must be > 0"
            )
        return RlqsAction(ACTION_TOKENS, TokenBucket(tb.max_tokens, 1, interval / per_fill))
    if which == "requests_per_time_unit":
        log.warning(
            "%s: requests_per_time_unit is not supported (as in Envoy 1.40): allow all", path
        )
    return RlqsAction(ACTION_ALLOW_ALL)


def _same_bucket(a: Any, strategy: Any) -> bool:
    """True if `strategy` is the token bucket `a` already enforces (keep its tokens)."""
    if a.bucket is None or strategy.WhichOneof("strategy") != "token_bucket":
        return False
    tb = strategy.token_bucket
    per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
    return (
        a.bucket.max_tokens == tb.max_tokens
        and abs(a.bucket.fill_interval - _seconds(tb.fill_interval) / per_fill) < 1e-12
    )


class _FilterGone(Exception):
    """The client's filter was dropped with its config: the stream ends."""


class RlqsClient:
    """The reporting half for one filter: usage reports out, assignments in."""

    def __init__(
        self,
        flt: Any,
        cfg: Any,
        settings: Any,
        bucket_id: dict[str, str],
        loop: Any,
        clusters: dict,
        path: str,
    ):
        # weak: a listener or route replaced by xDS (e.g. the pilot's policies changing)
        # drops its filters; the client then ends its stream instead of reporting forever
        self._flt = weakref.ref(flt)
        self.domain = cfg.domain
        self.cluster = cfg.rlqs_server.envoy_grpc.cluster_name
        authority = cfg.rlqs_server.envoy_grpc.authority  # the calls' :authority, if set
        self.channel_options = [("grpc.default_authority", authority)] if authority else []
        self.bucket_id = bucket_id
        self.loop = loop
        self.clusters = clusters
        self.path = path
        self.interval = _seconds(settings.reporting_interval)
        self.default = (
            compile_strategy(
                settings.no_assignment_behavior.fallback_rate_limit,
                f"{path}.no_assignment_behavior",
            )
            if settings.HasField("no_assignment_behavior")
            else None
        )
        eab = settings.expired_assignment_behavior
        self.has_expired = settings.HasField("expired_assignment_behavior")
        self.expired_timeout = _seconds(eab.expired_assignment_behavior_timeout)
        self.expired_reuse = eab.HasField("reuse_last_assignment")
        self.expired_fallback = (
            compile_strategy(eab.fallback_rate_limit, f"{path}.expired_assignment_behavior")
            if eab.HasField("fallback_rate_limit")
            else None
        )
        self.last_report = loop.time()
        self.assigned: Any = None  # the last RlqsAction from the server
        self._expiry: Any = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.reports_sent = 0
        self.assignments = 0

    def start(self) -> None:
        """The bucket's first request: open the stream and report at once."""
        if self._task is None and not self._closed:
            self._wake.set()
            self._task = self.loop.create_task(self._run())

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._expiry is not None:
            self._expiry.cancel()

    def _target(self) -> tuple[str, int] | None:
        cl = self.clusters.get(self.cluster)
        if cl is None or not cl.hosts:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0].address, hosts[0].port

    @property
    def flt(self) -> Any:
        """The filter (RlqsFilter), or None once its config is gone."""
        return self._flt()

    def _report(self) -> Any:
        from envoy.service.rate_limit_quota.v3 import rlqs_pb2

        flt = self.flt
        if flt is None:
            self._closed = True
            raise _FilterGone(self.path)
        allowed, denied = flt.take_usage()
        now = self.loop.time()
        msg = rlqs_pb2.RateLimitQuotaUsageReports(domain=self.domain)
        u = msg.bucket_quota_usages.add(num_requests_allowed=allowed, num_requests_denied=denied)
        for k, v in self.bucket_id.items():
            u.bucket_id.bucket[k] = v
        u.time_elapsed.FromNanoseconds(int((now - self.last_report) * 1e9))
        self.last_report = now
        self.reports_sent += 1
        return msg

    async def _run(self) -> None:
        import grpc
        from envoy.service.rate_limit_quota.v3 import rlqs_pb2

        backoff = 0.1
        while not self._closed and self._flt() is not None:
            addr = self._target()
            if addr is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            channel = grpc.aio.insecure_channel(
                f"{addr[0]}:{addr[1]}", options=self.channel_options
            )
            call = channel.stream_stream(
                _METHOD,
                request_serializer=rlqs_pb2.RateLimitQuotaUsageReports.SerializeToString,
                response_deserializer=rlqs_pb2.RateLimitQuotaResponse.FromString,
            )()
            reader = self.loop.create_task(self._read(call))
            try:
                await call.write(self._report())
                backoff = 0.1
                while not self._closed and not reader.done():
                    await asyncio.sleep(self.interval)
                    await call.write(self._report())
            except Exception as e:  # noqa: BLE001 (any stream failure: reconnect, never die)
                log.debug("%s: RLQS stream to %s:%s ended: %r", self.path, *addr, e)
            finally:
                reader.cancel()
                call.cancel()
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _read(self, call: Any) -> None:
        import grpc

        try:
            async for resp in call:
                for act in resp.bucket_action:
                    if dict(act.bucket_id.bucket) == self.bucket_id:
                        self.apply(act)
        except Exception as e:  # noqa: BLE001 (the stream ended: _run reconnects)
            if not isinstance(e, grpc.aio.AioRpcError):
                log.warning("%s: RLQS response not applied: %r", self.path, e)

    def apply(self, act: Any) -> None:
        """One BucketAction from the server."""
        if act.HasField("abandon_action"):
            self._set_assigned(None)
            return
        if not act.HasField("quota_assignment_action"):
            return
        qa = act.quota_assignment_action
        strategy = qa.rate_limit_strategy
        cur = self.assigned
        if cur is None or not _same_bucket(cur, strategy):
            cur = compile_strategy(strategy, f"{self.path} (RLQS assignment)")
        self.assignments += 1
        self._set_assigned(cur)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        ttl = _seconds(qa.assignment_time_to_live)
        if ttl > 0:
            self._expiry = self.loop.call_later(ttl, self._expired)

    def _set_assigned(self, action: Any) -> None:
        from sofamesh._core.rlqs import ACTION_ALLOW_ALL, RlqsAction

        self.assigned = action
        if action is None:
            action = self.default or RlqsAction(ACTION_ALLOW_ALL)
        flt = self.flt
        if flt is not None:
            flt.set_action(action)

    def _expired(self) -> None:
        self._expiry = None
        if not self.has_expired or (not self.expired_reuse and self.expired_fallback is None):
            self._set_assigned(None)  # back to no_assignment_behavior
            return
        flt = self.flt
        if self.expired_fallback is not None and flt is not None:
            flt.set_action(self.expired_fallback)
        timeout = self.expired_timeout or 0.0
        if timeout > 0:
            self._expiry = self.loop.call_later(timeout, lambda: self._set_assigned(None))


def _compile(typed_config: Any, context: dict) -> tuple[Any, Any, dict[str, str], Any]:
    from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2 as q

    from sofamesh.proxy.errors import UnsupportedConfig

    path = context.get("path", "")
    cfg = q.RateLimitQuotaFilterConfig()
    if not typed_config.Unpack(cfg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    tpath = f"{path}.typed_config"
    _refuse(
        cfg,
        tpath,
        ("filter_enabled", "filter_enforced", "request_headers_to_add_when_not_enforced"),
    )
    if cfg.rlqs_server.WhichOneof("target_specifier") != "envoy_grpc":
        raise UnsupportedConfig(f"{tpath}.rlqs_server: only envoy_grpc is supported")
    m = cfg.bucket_matchers
    mpath = f"{tpath}.bucket_matchers"
    match = None
    kind = m.WhichOneof("matcher_type")
    if (
        kind == "matcher_list"
        and len(m.matcher_list.matchers) == 1
        and not m.HasField("on_no_match")
    ):
        one = m.matcher_list.matchers[0]
        apath = f"{mpath}.matcher_list.matchers[0].on_match.action"
        match = _predicate(
            one.predicate,
            f"{mpath}.matcher_list.matchers[0].predicate",
            context.get("header_names"),
        )
        action = one.on_match.action
        if one.on_match.WhichOneof("on_match") != "action":
            raise UnsupportedConfig(f"{apath}: expected a RateLimitQuotaBucketSettings action")
    elif kind is not None:
        raise UnsupportedConfig(
            f"{mpath}.{kind}: only a matcher_list of one matcher (without on_no_match) is "
            "implemented by sofamesh"
        )
    else:
        apath = f"{mpath}.on_no_match.action"
        action = m.on_no_match.action
        if not m.HasField("on_no_match"):
            raise UnsupportedConfig(f"{apath}: expected a RateLimitQuotaBucketSettings action")
    if action.typed_config.type_url != SETTINGS_URL:
        raise UnsupportedConfig(f"{apath}: expected a RateLimitQuotaBucketSettings action")
    settings = q.RateLimitQuotaBucketSettings()
    action.typed_config.Unpack(settings)
    spath = f"{apath}.typed_config"
    bucket_id: dict[str, str] = {}
    for k, vb in settings.bucket_id_builder.bucket_id_builder.items():
        if vb.WhichOneof("value_specifier") != "string_value":
            raise UnsupportedConfig(
                f"{spath}.bucket_id_builder.bucket_id_builder[{k}]: only string_value is "
                "implemented by sofamesh"
            )
        bucket_id[k] = vb.string_value
    if not bucket_id:
        raise UnsupportedConfig(f"{spath}.bucket_id_builder: at least one entry is needed")
    if _seconds(settings.reporting_interval) <= 0:
        raise UnsupportedConfig(f"{spath}.reporting_interval: required, > 0")
    drs = settings.deny_response_settings
    _refuse(drs, f"{spath}.deny_response_settings", ("grpc_status",))
    return cfg, settings, bucket_id, match


_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"


def _predicate(pred: Any, path: str, names: set[str] | None = None) -> Any:
    """An xds matcher predicate over request headers as an RBAC rule (_core/rbac.pxd: the
    same compiled header matchers the RBAC filter runs, on HTTP requests and RPC calls);
    `names` collects the header names it reads."""
    from envoy.config.route.v3 import route_components_pb2
    from envoy.type.matcher.v3 import http_inputs_pb2

    from sofamesh._core import rbac as C
    from sofamesh.filters.http.rbac import _Compiler
    from sofamesh.proxy.errors import UnsupportedConfig

    kind = pred.WhichOneof("match_type")
    if kind in ("or_matcher", "and_matcher"):
        rules = [
            _predicate(p, f"{path}.{kind}.predicate[{i}]", names)
            for i, p in enumerate(getattr(pred, kind).predicate)
        ]
        return C.OrRule(rules) if kind == "or_matcher" else C.AndRule(rules)
    if kind == "not_matcher":
        return C.NotRule(_predicate(pred.not_matcher, f"{path}.not_matcher", names))
    if kind != "single_predicate":
        raise UnsupportedConfig(f"{path}: expected a predicate")
    sp = pred.single_predicate
    spath = f"{path}.single_predicate"
    inp = http_inputs_pb2.HttpRequestHeaderMatchInput()
    if sp.input.typed_config.type_url != _HEADER_INPUT or not sp.input.typed_config.Unpack(inp):
        raise UnsupportedConfig(
            f"{spath}.input: only HttpRequestHeaderMatchInput is implemented by sofamesh"
        )
    if sp.WhichOneof("matcher") != "value_match":
        raise UnsupportedConfig(f"{spath}.custom_match is not implemented by sofamesh")
    hm = route_components_pb2.HeaderMatcher(name=inp.header_name)
    # xds.type.matcher.v3.StringMatcher and Envoy's have the same fields and numbers
    hm.string_match.ParseFromString(sp.value_match.SerializeToString())
    if names is not None:
        names.add(inp.header_name.lower())
    return _Compiler()._header(hm, f"{spath}.value_match", each_value=False)


def factory(typed_config: Any, context: dict) -> Any:
    from sofamesh._core.rlqs import ACTION_ALLOW_ALL, RlqsAction, RlqsFilter

    cfg, settings, bucket_id, match = _compile(typed_config, context)
    drs = settings.deny_response_settings
    status = drs.http_status.code if drs.HasField("http_status") and drs.http_status.code else 429
    headers = [
        (h.header.key.encode(), h.header.value.encode()) for h in drs.response_headers_to_add
    ]
    holder: list[RlqsClient] = []
    flt = RlqsFilter(
        context.get("name") or NAME,
        RlqsAction(ACTION_ALLOW_ALL),
        lambda: holder[0].start(),
        status,
        drs.http_body.value,
        headers,
        match,
    )
    client = RlqsClient(
        flt,
        cfg,
        settings,
        bucket_id,
        context["loop"],
        context.get("clusters") or {},
        context.get("path", ""),
    )
    holder.append(client)
    client._set_assigned(None)  # no_assignment_behavior until the server answers
    return flt


def _register_settings() -> None:
    from sofamesh.config.support import register_extension

    # the bucket_matchers action's config: compiled by this filter
    register_extension(SETTINGS_URL, "sofamesh.filters.http.rate_limit_quota")


_register_settings()
SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
