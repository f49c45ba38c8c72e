"""The mixer's gRPC servicers: RLQS, the rate-limit service and the access log service.

Each is a thin adapter between Envoy's messages and a sans-IO core (`quota.QuotaState`,
`ratelimit.RateLimiter`, `metrics.RequestMetrics`); all run on the one asyncio loop, so the
cores need no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_strategy_pb2

from sofamesh.mixer.metrics import RequestMetrics
from sofamesh.mixer.quota import Assignment, QuotaState
from sofamesh.mixer.ratelimit import RateLimiter

log = logging.getLogger("sofamesh.mixer")

_streams = itertools.count(1)
_RLS_UNITS = {"second": 1, "minute": 2, "hour": 3, "day": 4}  # RateLimitResponse.RateLimit.Unit


def _bucket_action(bucket_id: dict[str, str], a: Assignment | None, ttl: float) -> Any:
    act = rlqs_pb2.RateLimitQuotaResponse.BucketAction()
    for k, v in bucket_id.items():
        act.bucket_id.bucket[k] = v
    qa = act.quota_assignment_action
    qa.assignment_time_to_live.FromNanoseconds(int(ttl * 1e9))
    strategy = qa.rate_limit_strategy
    if a is None:
        strategy.blanket_rule = ratelimit_strategy_pb2.RateLimitStrategy.ALLOW_ALL
    else:
        tb = strategy.token_bucket
        tb.max_tokens = a.max_tokens
        tb.tokens_per_fill.value = a.requests_per_second
        tb.fill_interval.seconds = 1
    return act


class QuotaService(rlqs_pb2_grpc.RateLimitQuotaServiceServicer):
    def __init__(self, state: QuotaState):
        self.state = state
        self.reports = 0
        self.pushed = 0
        self._outboxes: dict[str, asyncio.Queue] = {}  # stream -> responses to write

    def _response(self, items: list) -> Any:
        answer = rlqs_pb2.RateLimitQuotaResponse()
        for bucket_id, a in items:
            answer.bucket_action.append(_bucket_action(bucket_id, a, self.state.ttl))
        return answer

    def push(self) -> None:
        """Send the assignments that changed meanwhile to the streams they belong to."""
        for other, items in self.state.take_pushes().items():
            box = self._outboxes.get(other)
            if box is not None:
                self.pushed += 1
                box.put_nowait(self._response(items))

    async def _read(self, client: str, context: grpc.aio.ServicerContext, box: asyncio.Queue):
        try:
            while True:
                reports = await context.read()
                if reports is grpc.aio.EOF:
                    break
                self.reports += 1
                usages = [
                    (
                        dict(u.bucket_id.bucket),
                        u.num_requests_allowed,
                        u.num_requests_denied,
                        u.time_elapsed.ToNanoseconds() / 1e9,
                    )
                    for u in reports.bucket_quota_usages
                ]
                box.put_nowait(self._response(self.state.report(client, reports.domain, usages)))
                self.push()
        finally:
            box.put_nowait(None)

    async def StreamRateLimitQuotas(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        client = f"{context.peer()}#{next(_streams)}"  # one quota share per stream
        box: asyncio.Queue = asyncio.Queue()
        self._outboxes[client] = box
        reader = asyncio.ensure_future(self._read(client, context, box))
        try:
            while True:
                msg = await box.get()
                if msg is None:
                    break
                await context.write(msg)
        finally:
            reader.cancel()
            del self._outboxes[client]
            self.state.forget(client)
            self.push()


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter

    async def ShouldRateLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        verdicts = self.limiter.check(request.domain, descriptors, request.hits_addend or 1)
        resp = rls_pb2.RateLimitResponse()
        ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
        resp.overall_code = over if any(v.over_limit for v in verdicts) else ok
        for v in verdicts:
            st = resp.statuses.add(code=over if v.over_limit else ok)
            if v.rule is not None:
                st.current_limit.requests_per_unit = v.rule.requests_per_unit
                st.current_limit.unit = _RLS_UNITS[v.rule.unit]
                st.limit_remaining = v.remaining
                st.duration_until_reset.FromNanoseconds(int(v.reset_in * 1e9))
        return resp


def _duration_ms(common: Any) -> float:
    for name in ("duration", "time_to_last_downstream_tx_byte"):
        if common.HasField(name):
            return getattr(common, name).ToNanoseconds() / 1e6
    return 0.0


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, metrics: RequestMetrics):
        self.metrics = metrics

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        reporter = source = "unknown"
        self.metrics.streams += 1
        async for msg in request_iterator:
            if msg.HasField("identifier"):  # first message of a stream only
                node = msg.identifier.node
                reporter = node.id or "unknown"
                source = node.cluster or reporter
            for e in msg.http_logs.log_entry:
                c = e.common_properties
                code = (
                    str(e.response.response_code.value)
                    if e.response.HasField("response_code")
                    else "0"
                )
                self.metrics.record(
                    (reporter, source, c.upstream_cluster or "unknown", code), _duration_ms(c)
                )
            for e in msg.tcp_logs.log_entry:  # one per closed connection (tcp_grpc)
                self.metrics.record_tcp(
                    (reporter, source, e.common_properties.upstream_cluster or "unknown"),
                    e.connection_properties.received_bytes,
                    e.connection_properties.sent_bytes,
                )
        return als_pb2.StreamAccessLogsResponse()
