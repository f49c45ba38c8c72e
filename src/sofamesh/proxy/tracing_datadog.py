"""HCM tracing with `envoy.tracers.datadog`, as Envoy 1.40 traces (its tracer is
dd-trace-cpp v2.1.1): spans in msgpack to a Datadog agent's /v0.4/traces, the context in
x-datadog-* and W3C traceparent/tracestate headers.

Per request (_core/http_tracing: the TRACE_PY style calls `start_context` and
`context_headers` here):
- every request gets a span and every span is reported, sampled or not: the sampling
  priority travels with it (_sampling_priority_v1) and the agent drops what is not kept
  (it counts them for APM stats), as dd-trace-cpp reports;
- the caller's context is extracted Datadog-first, then W3C (x-datadog-trace-id and
  -parent-id in decimal, -sampling-priority, -origin, -tags: its _dd.p.* tags, _dd.p.tid the
  high 64 bits; traceparent and the tracestate's dd= entry: s, o, p, t.*); when both name
  the same trace the W3C parent wins and the Datadog one is kept in _dd.parent_id; an
  unreadable context starts a new trace (as Envoy, which logs it);
- the priority: the caller's when it sent one; else -1 (USER_DROP) when the connection
  manager did not trace the request (random/client/overall sampling); else the agent's
  rate for the service (rate_by_service, "service:<name>,env:"; the default key; else 1.0
  before any answer) on a Knuth hash of the trace id: 1 (AUTO_KEEP) or 0, tagged _dd.p.dm
  (-0 before the agent answered, -1 after) and _dd.p.ksr, and the rate as _dd.agent_psr;
- a new trace has a 128-bit id whose high half starts with the time in seconds (_dd.p.tid);
  the upstream request carries x-datadog-trace-id (low half), -parent-id (this span),
  -sampling-priority, -origin, -tags (the _dd.p.* tags), traceparent and tracestate
  (dd=s:..;p:..;o:..;t.<tag>:.. then the caller's other vendors' entries).
Spans: name envoy.proxy, resource the operation (ingress/egress or the route's decorator;
a `resource.name` custom tag overrides it), type web, Envoy's tags as meta (`error` becomes
the span's error flag, `error.reason` also error.message), the trace tags and
language/runtime-id/version meta, process_id and priority metrics.
Reports: the traces finished in the last 2 s (dd-trace-cpp's flush interval), one POST in
flight (2 s timeout), at most MAX_PENDING traces waiting (later ones dropped and counted in
tracing.datadog.traces_dropped). Stats as Envoy's: tracing.datadog.reports_sent (agent
answered 200), reports_dropped (another status, or no answer: Envoy's async client answers
those 503 itself), reports_failed (listed, 0), reports_skipped_no_cluster.
With `spawn_upstream_span` each upstream attempt also gets a span ("router <cluster>
egress", Envoy's upstream tags), sent in the same trace chunk after the local root; the
upstream's parent id is that span's. `remote_config` (Envoy polls the agent's /v0.7/config)
is refused by name.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
import uuid
from typing import Any

from sofamesh._core.http_stream import TraceCtx  # type: ignore[attr-defined]  # no stub
from sofamesh._core.msgpack_span import array_head, pack_span
from sofamesh.proxy import tracing
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.tracing")

DATADOG_TYPE = "type.googleapis.com/envoy.config.trace.v3.DatadogConfig"
DATADOG_NAMES = ("envoy.tracers.datadog",)
TRACE_PY = 3  # _core/http_tracing.pxd
TRACES_PATH = "/v0.4/traces"
FLUSH_INTERVAL_S = 2.0  # dd-trace-cpp's flush_interval_milliseconds
REQUEST_TIMEOUT_S = 2.0  # and request_timeout_milliseconds
MAX_PENDING = 10_000  # traces waiting for a report
TAGS_MAX = 512  # x-datadog-tags, either way
TRACESTATE_DD_MAX = 256
KNUTH = 1111111111111111111
U64 = (1 << 64) - 1
USER_DROP = -1
MECH_DEFAULT, MECH_AGENT, MECH_MANUAL = 0, 1, 4
DEFAULT_KEY = "service:,env:"
HEALTH_CHECK = "envoy.filters.http.health_check"  # its mark in a stream's filter_state


class DatadogContext(TraceCtx):
    """A request's Datadog span context (the TraceCtx fields the connection manager uses,
    and these). ids are ints; ttags the trace tags (_dd.p.*) in their order."""

    __slots__ = (
        "dd_extra",
        "done",
        "hi",
        "lo",
        "mech",
        "origin",
        "pid",
        "priority",
        "rate",
        "sid",
        "span_tags",
        "ttags",
        "w3c_extra",
    )


class _Bad(ValueError):
    """An unreadable incoming context: Envoy starts a new trace."""


def _u64(v: str, base: int) -> int:
    v = v.strip()
    digits = "0123456789" if base == 10 else "0123456789abcdefABCDEF"
    if not v or not all(c in digits for c in v):
        raise _Bad(v)
    n = int(v, base)
    if n > U64:
        raise _Bad(v)
    return n


def _int(v: str) -> int:
    v = v.strip()
    d = v[1:] if v[:1] in "+-" else v
    if not d.isdigit() or not d.isascii():
        raise _Bad(v)
    return int(v)


_RATES: dict[float, str] = {}


def format_rate(rate: float) -> str:
    """dd-trace-cpp's rate text: 6 decimals, trailing zeros and point stripped."""
    text = _RATES.get(rate)
    if text is None:
        text = f"{rate:.6f}".rstrip("0").rstrip(".")
        if len(_RATES) < 1024:
            _RATES[rate] = text
    return text


# tracestate: characters outside 0x20-0x7e and the separators become "_"
_BAD_KEY = re.compile(r"[^\x21-\x7e]|[,;=]")
_BAD_VALUE = re.compile(r"[^\x20-\x7e]|[,;~]")


class DatadogTracer(tracing.Tracer):
    TRACE_KIND = TRACE_PY
    SPAWN = True

    def __init__(
        self, cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
    ) -> None:
        from envoy.config.trace.v3 import datadog_pb2

        super().__init__(cfg, server, local_ip, path, egress)
        tp = f"{path}.provider.typed_config"
        dd = datadog_pb2.DatadogConfig()
        if not cfg.provider.typed_config.Unpack(dd):
            raise UnsupportedConfig(f"{tp}: expected DatadogConfig")
        if dd.HasField("remote_config"):
            raise UnsupportedConfig(
                f"{tp}.remote_config: not implemented by sofamesh (Envoy polls the agent's "
                "/v0.7/config for APM_TRACING settings)"
            )
        self.cluster = dd.collector_cluster
        self.authority = dd.collector_hostname or dd.collector_cluster
        self.service = dd.service_name or "envoy"
        self.rate_key = f"service:{self.service},env:"
        self.rates: dict[str, float] = {}
        from sofamesh import __version__

        self.version = f"sofamesh {__version__}"
        self.runtime_id = str(uuid.uuid4())
        self.pid = float(os.getpid())
        self.collector = tracing.HttpCollector(server, self.cluster)
        self.pending: list[bytes] = []
        self.timer: Any = None
        self.busy = False
        st = server.stats
        p = "tracing.datadog."
        self.c = {
            n: st.counter(p + n)
            for n in (
                "reports_sent",
                "reports_dropped",
                "reports_failed",
                "reports_skipped_no_cluster",
            )
        }
        for c in self.c.values():
            c.used = True  # Envoy lists them from the start

    # the context (hot path: _core/http_tracing TRACE_PY) ---------------------------------
    def new_context(self) -> DatadogContext:
        return DatadogContext()

    def start_context(self, t: Any, h: Any) -> None:
        try:
            self._start(t, h)
        except Exception:
            log.exception("datadog: span context")
            t.trace_id = None
            t.sampled = False

    def _start(self, t: Any, h: Any) -> None:
        t.sampled = True  # every span is reported, with its priority
        t.done = None
        t.span_tags = {}
        t.origin = t.dd_extra = t.w3c_extra = None
        t.mech = t.rate = None
        got = None
        if h.get_value(b"x-datadog-trace-id") is not None or h.get_value(b"traceparent"):
            try:
                got = self._extract(h, t.span_tags)
            except _Bad:
                got = None
        sid = random.getrandbits(64) or 1
        t.sid = sid
        prio = None
        if got is None:
            t.span_tags = {}
            t.lo = sid
            t.hi = (int(time.time()) & 0xFFFFFFFF) << 32
            t.pid = 0
            t.ttags = [("_dd.p.tid", f"{t.hi:016x}")]
        else:
            t.hi, t.lo, t.pid, prio, t.origin, t.ttags, t.dd_extra, t.w3c_extra = got
        if prio is not None:
            t.priority = prio
        elif not t.decision:  # Envoy: not traced and no caller's decision: a user drop
            t.priority = USER_DROP
            t.mech = MECH_MANUAL
        else:
            rate = self.rates.get(self.rate_key)
            if rate is None:
                rate = self.rates.get(DEFAULT_KEY)
            t.mech = MECH_DEFAULT if rate is None else MECH_AGENT
            t.rate = 1.0 if rate is None else rate
            limit = U64 if t.rate >= 1.0 else int(t.rate * float(U64))
            t.priority = 1 if (t.lo * KNUTH) & U64 <= limit else 0
        if t.mech is not None:
            tags = [kv for kv in t.ttags if kv[0] != "_dd.p.dm"] if t.priority <= 0 else t.ttags
            if t.priority > 0:
                for i, (k, _) in enumerate(tags):
                    if k == "_dd.p.dm":
                        tags[i] = (k, f"-{t.mech}")
                        break
                else:
                    tags.append(("_dd.p.dm", f"-{t.mech}"))
            if t.mech == MECH_AGENT:
                tags.append(("_dd.p.ksr", format_rate(t.rate)))
            t.ttags = tags
        t.trace_id = b"%032x" % ((t.hi << 64) | t.lo)
        t.span_id = b"%016x" % sid

    @staticmethod
    def _extract(h: Any, span_tags: dict[str, str]) -> tuple | None:
        """(hi, lo, parent, priority, origin, trace tags, extra dd tracestate, other
        vendors' tracestate) of the caller, or None; _Bad when it is unreadable."""
        dd: Any = None
        v = h.get_value(b"x-datadog-trace-id")
        pv = h.get_value(b"x-datadog-parent-id")
        if v is not None or pv is not None:
            lo = _u64(v.decode("latin-1"), 10) if v is not None else None
            pid = _u64(pv.decode("latin-1"), 10) if pv is not None else None
            sp = h.get_value(b"x-datadog-sampling-priority")
            prio = _int(sp.decode("latin-1")) if sp is not None else None
            o = h.get_value(b"x-datadog-origin")
            origin = o.decode("latin-1") if o is not None else None
            hi = 0
            ttags: list[tuple[str, str]] = []
            raw = h.get_value(b"x-datadog-tags")
            if raw is not None:
                if len(raw) > TAGS_MAX:
                    span_tags["_dd.propagation_error"] = "extract_max_size"
                else:
                    hi = DatadogTracer._decode_tags(raw.decode("latin-1"), ttags, span_tags, lo)
            dd = [hi, lo, pid, prio, origin, ttags, None, None]
        w3c: Any = None
        tp = h.get_value(b"traceparent")
        if tp is not None:
            w3c = DatadogTracer._w3c(tp.decode("latin-1").strip(), h, span_tags)
        main: Any = dd if dd is not None and dd[1] is not None else w3c
        if main is None or main[1] is None:
            if (dd and dd[2] is not None) or (w3c and w3c[2] is not None):
                raise _Bad("a parent id without a trace id")
            return None
        if main is dd and w3c is not None and (w3c[0], w3c[1]) == (dd[0], dd[1]):
            main = list(dd)
            main[6], main[7] = w3c[6], w3c[7]
            if main[2] != w3c[2]:
                p = w3c[8]
                if p and p != "0000000000000000":
                    span_tags["_dd.parent_id"] = p
                elif dd[2] is not None:
                    span_tags["_dd.parent_id"] = f"{dd[2]:016x}"
                main[2] = w3c[2]
        elif main is w3c and w3c[8] is not None:
            span_tags["_dd.parent_id"] = w3c[8]
        hi, lo, pid, prio, origin, ttags, dd_extra, w3c_extra = main[:8]
        if pid is None:
            if origin is None:
                raise _Bad("a trace id without a parent id")
            pid = 0
        if lo == 0 and hi == 0:
            raise _Bad("trace id 0")
        if hi:
            have = [i for i, (k, _) in enumerate(ttags) if k == "_dd.p.tid"]
            if not have:
                ttags.append(("_dd.p.tid", f"{hi:016x}"))
        return hi, lo, pid, prio, origin, ttags, dd_extra, w3c_extra

    @staticmethod
    def _decode_tags(raw: str, out: list, span_tags: dict[str, str], lo: int | None) -> int:
        hi = 0
        entries = raw.split(",") if raw else []
        if entries and entries[-1] == "":
            entries.pop()
        if any("=" not in e for e in entries):
            span_tags["_dd.propagation_error"] = "decoding_error"
            return 0
        for e in entries:
            k, _, val = e.partition("=")
            if not k.startswith("_dd.p."):
                continue
            if k == "_dd.p.tid":
                try:
                    if len(val) != 16:
                        raise _Bad(val)
                    hi = _u64(val, 16)
                except _Bad:
                    span_tags["_dd.propagation_error"] = "malformed_tid " + val
                    continue
            out.append((k, val))
        return hi if lo is not None else 0

    @staticmethod
    def _w3c(tp: str, h: Any, span_tags: dict[str, str]) -> list | None:
        """[hi, lo, parent, priority, origin, tags, dd extra, other vendors, dd p] of a
        traceparent and its tracestate; None (and _dd.w3c_extraction_error) if malformed."""
        parts = tp.split("-")
        err = None
        if len(tp) < 55 or len(parts) < 4 or len(parts[0]) != 2:
            err = "malformed_traceparent"
        elif parts[0].lower() == "ff" or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            err = "invalid_version"
        elif (
            len(parts[1]) != 32
            or len(parts[2]) != 16
            or len(parts[3]) != 2
            or parts[0] == "00"
            and len(parts) != 4
        ):
            err = "malformed_traceparent"
        if err is None:
            try:
                tid = _u64(parts[1][:16], 16) << 64 | _u64(parts[1][16:], 16)
            except _Bad:
                tid = 0
            try:
                pid = _u64(parts[2], 16)
            except _Bad:
                pid = 0
            try:
                flags = _u64(parts[3], 16)
            except _Bad:
                flags = -1
            if not tid:
                err = "malformed_traceid"
            elif not pid:
                err = "malformed_parentid"
            elif flags < 0:
                err = "malformed_traceflags"
        if err is not None:
            span_tags["_dd.w3c_extraction_error"] = err
            return None
        r: list = [tid >> 64, tid & U64, pid, flags & 1, None, [], None, None, "0000000000000000"]
        ts = h.get_value(b"tracestate")
        ts = ts.decode("latin-1").strip() if ts else ""
        if not ts:
            return r
        entries = ts.split(",")
        dd_at = next(
            (i for i, e in enumerate(entries) if e.strip().partition("=")[0] == "dd"), None
        )
        if dd_at is None:
            r[7] = ts
            return r
        other = ",".join(entries[:dd_at] + entries[dd_at + 1 :])
        r[7] = other or None
        value = entries[dd_at].strip().partition("=")[2]
        if len(value) > TAGS_MAX:
            span_tags["_dd.propagation_error"] = "extract_max_size"
            return r
        extra = []
        for pair in value.split(";"):
            k, sep, v = pair.partition(":")
            if not pair or not sep:
                continue
            if k == "o":
                r[4] = v.replace("~", "=")
            elif k == "s":
                try:
                    p = _int(v)
                except _Bad:
                    continue
                if (r[3] > 0) == (p > 0):
                    r[3] = p
            elif k == "p":
                r[8] = v
            elif k.startswith("t."):
                r[5].append(("_dd.p." + k[2:], v.replace("~", "=")))
            else:
                extra.append(pair)
        r[6] = ";".join(extra) or None
        return r

    def context_headers(self, t: Any) -> list[tuple[bytes, bytes]]:
        """The upstream request's x-datadog-* and W3C headers (set: replacing the caller's)."""
        prio = t.priority
        sid = t.span_id if t.child_id is None else t.child_id  # spawn_upstream_span's
        out = [
            (b"x-datadog-trace-id", b"%d" % t.lo),
            (b"x-datadog-parent-id", b"%d" % int(sid, 16)),
            (b"x-datadog-sampling-priority", b"%d" % prio),
        ]
        if t.origin is not None:
            out.append((b"x-datadog-origin", t.origin.encode("latin-1")))
        enc = ",".join(f"{k}={v}" for k, v in t.ttags)
        if len(enc) > TAGS_MAX:
            t.span_tags["_dd.propagation_error"] = "inject_max_size"
        elif enc:
            out.append((b"x-datadog-tags", enc.encode("latin-1")))
        out.append(
            (b"traceparent", b"00-" + t.trace_id + b"-" + sid + (b"-01" if prio > 0 else b"-00"))
        )
        st = f"dd=s:{prio};p:{sid.decode()}"
        if t.origin is not None:
            st += ";o:" + _BAD_VALUE.sub("_", t.origin).replace("=", "~")
        for k, v in t.ttags:
            if k.startswith("_dd.p.") and k != "_dd.p.tid":
                v = _BAD_VALUE.sub("_", v).replace("=", "~")
                st += ";t." + _BAD_KEY.sub("_", k[6:]) + ":" + v
        if t.dd_extra:
            st += ";" + t.dd_extra
        while len(st) > TRACESTATE_DD_MAX:
            st = st[: st.rindex(";")]
        if t.w3c_extra:
            st += "," + t.w3c_extra
        out.append((b"tracestate", st.encode("latin-1")))
        return out

    # the span --------------------------------------------------------------------------
    def server_name(self, s: Any, authority: str) -> str:
        """Envoy's operation name: ingress, or egress and the request's host."""
        return "egress " + authority if self.egress else "ingress"

    def finish(self, s: Any, span: Any, status: int) -> None:
        end_ns = time.time_ns()
        authority = (s.authority or b"").decode("latin-1")
        route = s.route
        resource = route.decorator if route is not None and route.decorator else None
        tags = self._server_tags(s, span, status, authority)
        fs = s.filter_state
        if fs and fs.get(HEALTH_CHECK):
            # Envoy's connection manager unsamples a health check's span (a user drop)
            span.priority, span.mech = USER_DROP, MECH_MANUAL
            span.ttags = [kv for kv in span.ttags if kv[0] != "_dd.p.dm"]
        error = 1 if tags.pop("error", None) == "true" else 0
        if "error.reason" in tags:
            tags["error.message"] = tags["error.reason"]
        resource = tags.pop("resource.name", None) or resource or self.server_name(s, authority)
        meta = tags
        meta["version"] = self.version
        for k, v in span.ttags:  # the local root's trace tags (a tag already set stays)
            meta.setdefault(k, v)
        for k, v in span.span_tags.items():
            meta.setdefault(k, v)
        if span.origin is not None:
            meta["_dd.origin"] = span.origin
        meta["language"] = "python"
        meta["runtime-id"] = self.runtime_id
        metrics = {"process_id": self.pid, "_sampling_priority_v1": float(span.priority)}
        if span.mech in (MECH_DEFAULT, MECH_AGENT):
            metrics["_dd.agent_psr"] = span.rate
        start_ns = span.start_us * 1000
        rec = {
            "service": self.service,
            "name": "envoy.proxy",
            "resource": resource,
            "trace_id": span.lo,
            "span_id": span.sid,
            "parent_id": span.pid,
            "start": start_ns,
            "duration": max(end_ns - start_ns, 0),
            "error": error,
            "meta": meta,
            "metrics": metrics,
            "type": "web",
        }
        chunk = [pack_span(rec)]  # the local root first, as dd-trace-cpp sends a trace
        if span.done:  # retried attempts' upstream spans
            chunk += span.done
        if span.child_id is not None:
            chunk.append(self._upstream_span(s, span, end_ns, None))
        self._enqueue(array_head(len(chunk)) + b"".join(chunk))

    def attempt(self, s: Any, span: Any, status: int, reason: str | None) -> None:
        """spawn_upstream_span and a retry: the retried attempt's span joins the trace."""
        packed = self._upstream_span(s, span, time.time_ns(), (status, reason))
        span.done = [*span.done, packed] if span.done else [packed]

    def _upstream_span(self, s: Any, span: Any, end_ns: int, attempt: Any) -> bytes:
        """spawn_upstream_span's child: "router <cluster> egress", Envoy's upstream tags."""
        meta = self._upstream_tags(s, span, attempt)
        error = 1 if meta.pop("error", None) == "true" else 0
        if "error.reason" in meta:
            meta["error.message"] = meta["error.reason"]
        meta["version"] = self.version
        if span.origin is not None:
            meta["_dd.origin"] = span.origin
        meta["language"] = "python"
        meta["runtime-id"] = self.runtime_id
        start_ns = span.child_us * 1000
        return pack_span(
            {
                "service": self.service,
                "name": "envoy.proxy",
                "resource": f"router {s.upstream_cluster} egress",
                "trace_id": span.lo,
                "span_id": int(span.child_id, 16),
                "parent_id": span.sid,
                "start": start_ns,
                "duration": max(end_ns - start_ns, 0),
                "error": error,
                "meta": meta,
                "metrics": {"process_id": self.pid},
                "type": "web",
            }
        )

    def report(self, records: list) -> None:  # spans are encoded whole in finish
        raise NotImplementedError

    # reporting -------------------------------------------------------------------------
    def _enqueue(self, trace: bytes) -> None:
        if len(self.pending) >= MAX_PENDING:  # not one of Envoy's: made on the first drop
            tracing._bump(self.server.stats.counter("tracing.datadog.traces_dropped"))
            return
        self.pending.append(trace)
        if self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._flush)

    def _flush(self) -> None:
        self.timer = None
        if not self.pending:
            return
        if self.busy:  # the last report is still out: these go with the next tick
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._flush)
            return
        batch, self.pending = self.pending, []
        self.busy = True
        self.loop.create_task(self._send(batch))

    async def _send(self, batch: list[bytes]) -> None:
        body = array_head(len(batch)) + b"".join(batch)
        headers = [
            ("x-datadog-trace-count", str(len(batch))),
            ("datadog-meta-lang", "python"),
            ("datadog-meta-lang-version", "{}.{}".format(*sys.version_info[:2])),
            ("datadog-meta-tracer-version", self.version),
        ]
        try:
            status = await self.collector.post(
                TRACES_PATH,
                self.authority,
                "application/msgpack",
                body,
                headers,
                timeout=REQUEST_TIMEOUT_S,
            )
        except Exception as e:  # noqa: BLE001 - a report never takes the proxy down
            # Envoy's async client turns a refused, reset or timed-out connection into a
            # local 503/504 answer: counted as a dropped report, not a failed one
            log.warning("datadog agent %s unreachable (%d traces): %r", self.cluster, len(batch), e)
            status = 503
        finally:
            self.busy = False
        if status is None:
            tracing._bump(self.c["reports_skipped_no_cluster"])
        elif status != 200:
            tracing._bump(self.c["reports_dropped"])
            log.warning("datadog agent answered %d to %d traces", status, len(batch))
        else:
            tracing._bump(self.c["reports_sent"])
            self._rates(self.collector.body)
        if self.pending and self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL_S, self._flush)

    def _rates(self, body: bytes) -> None:
        """The agent's rate_by_service: the sampler's rates from now on."""
        try:
            got = json.loads(body) if body else None
        except ValueError:
            got = None
        if not isinstance(got, dict):
            log.warning("datadog agent: unreadable answer to traces (%d bytes)", len(body))
            return
        rates = got.get("rate_by_service")
        if rates is None:
            return
        if not isinstance(rates, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
            for v in rates.values()
        ):
            log.warning("datadog agent: invalid rate_by_service %r", rates)
            return
        new = {k: float(v) for k, v in rates.items()}
        if DEFAULT_KEY not in new and DEFAULT_KEY in self.rates:
            new[DEFAULT_KEY] = self.rates[DEFAULT_KEY]  # the default rate is kept
        self.rates = new

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.collector.drop()


def _factory(
    cfg: Any, server: Any, stat_prefix: str, local_ip: str, path: str, egress: bool
) -> DatadogTracer:
    return DatadogTracer(cfg, server, stat_prefix, local_ip, path, egress)


tracing.register_provider(DATADOG_TYPE, DATADOG_NAMES, _factory)
