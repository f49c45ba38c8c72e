"""Envoy's stats output formats from a `Store.snapshot()`: text, JSON, Prometheus.

Prometheus names use Envoy's default tag extraction: a regex per tag, whose first group
is cut from the name and whose second group is the tag value, e.g.
`cluster.backend.upstream_rq_200` -> `envoy_cluster_upstream_rq{envoy_response_code="200",
envoy_cluster_name="backend"}`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

# Envoy's default tag extractors (name, regex, required substring), in Envoy's order.
TAG_EXTRACTORS: list[tuple[str, re.Pattern[str], str]] = [
    (name, re.compile(rx), sub)
    for name, rx, sub in [
        ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
        ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
        ("envoy.http_conn_manager_prefix", r"^listener(?=\.).*?\.http\.((.*?)\.)", ".http."),
        ("envoy.worker_id", r"^listener\..*?\.worker_((\d+)\.)", "worker_"),
        ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)", "http."),
        ("envoy.http_user_agent", r"^http\.(?:.*?)\.user_agent\.((.*?)\.)", ".user_agent."),
        ("envoy.virtual_host", r"^vhost\.((.*?)\.)", "vhost."),
        ("envoy.virtual_cluster", r"^vhost\.(?:.*?)\.vcluster\.((.*?)\.)", ".vcluster."),
        ("envoy.cluster_name", r"^cluster\.((.*?)\.)", "cluster."),
        (
            "envoy.listener_address",
            r"^listener\.(((?:[_.\d]*|[_\[\]aAbBcCdDeEfF\d]*))\.)",
            "listener.",
        ),
        ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)", "tcp."),
        ("envoy.udp_prefix", r"^udp\.((.*?)\.)", "udp."),
        ("envoy.redis_prefix", r"^redis\.((.*?)\.)", "redis."),
        ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)", "ratelimit."),
        (
            "envoy.local_http_ratelimit_prefix",
            r"^http_local_rate_limit\.((.*?)\.)",
            "http_local_rate_limit.",
        ),
        ("envoy.rbac_prefix", r"^http\.(?:.*?)\.rbac\.((.*?)\.)", ".rbac."),
        ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.cipher(\.(.*?))$", ".ssl.cipher."),
        ("envoy.dns_filter_prefix", r"^dns_filter\.((.*?)\.)", "dns_filter."),
        ("envoy.thrift_prefix", r"^thrift\.((.*?)\.)", "thrift."),
        ("envoy.dubbo_prefix", r"^dubbo\.((.*?)\.)", "dubbo."),
        ("envoy.proxy_protocol_prefix", r"^proxy_proto\.((.*?)\.)", "proxy_proto."),
    ]
]
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def regex_prefix(rx: str) -> str:
    """The stat name's first token an extractor's regex requires (`^cluster\\.` -> cluster),
    or "": Envoy indexes extractors by it, and runs those without one first."""
    if not rx.startswith("^"):
        return ""
    for i in range(1, len(rx)):
        c = rx[i]
        if not (c.isalnum() or c == "_"):
            rest = rx[i:]
            if i > 1 and (i == len(rx) - 1 or rest.startswith((r"\.", r"(?=\.)"))):
                return rx[1:i]
            return ""
    return ""


# (id of an extractor list, a name's first token) -> (that list, the extractors to run in
# order); PERF(benchmarks/xds_scale.py): working the order out per stat name (each
# extractor's regex read char by char) made /stats/prometheus take 18 s at 10,000 clusters
_ORDER: dict[tuple[int, str | None], tuple[list, list]] = {}


def _ordered(extractors: list[tuple[str, re.Pattern[str], str]], name: str) -> list:
    first = name.split(".", 1)[0] if "." in name else None
    key = (id(extractors), first)
    got = _ORDER.get(key)
    if got is not None and got[0] is extractors:
        return got[1]
    plain = [e for e in extractors if not regex_prefix(e[1].pattern)]
    indexed = [e for e in extractors if first and regex_prefix(e[1].pattern) == first]
    if len(_ORDER) >= 4096:
        _ORDER.clear()
    _ORDER[key] = (extractors, plain + indexed)  # the list held: its id stays its own
    return plain + indexed


def extract_tags(
    name: str,
    extractors: list[tuple[str, re.Pattern[str], str]] | None = None,
    fixed: list[tuple[str, str]] | tuple = (),
) -> tuple[str, list[tuple[str, str]]]:
    """(tag-extracted name, [(tag name, value)]) as Envoy's extractors give: Envoy's
    defaults, or a bootstrap's stats_config (admin/stats_config.py); fixed-value tags
    first."""
    cuts: list[tuple[int, int]] = []
    tags: list[tuple[str, str]] = list(fixed)
    seen: set[str] = {t for t, _ in fixed}
    chosen = TAG_EXTRACTORS if extractors is None else _ordered(extractors, name)
    for tag, rx, sub in chosen:
        if sub not in name or tag in seen:
            continue
        m = rx.search(name)
        if not m:
            continue
        s, e = m.span(1)
        if any(s < ce and cs < e for cs, ce in cuts):
            continue
        cuts.append((s, e))
        value = m.group(2) if (m.re.groups >= 2 and m.group(2) is not None) else m.group(1)
        tags.append((tag, value))
        seen.add(tag)
    if not cuts:
        return name, tags
    out, pos = [], 0
    for s, e in sorted(cuts):
        out.append(name[pos:s])
        pos = e
    out.append(name[pos:])
    base = "".join(out)
    base = re.sub(r"\.\.+", ".", base).strip(".")
    return base, tags


def prom_name(base: str) -> str:
    return "envoy_" + _BAD_CHARS.sub("_", base)


def prom_label(tag: str) -> str:
    return _BAD_CHARS.sub("_", tag)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(tags: list[tuple[str, str]], extra: str = "") -> str:
    parts = [f'{prom_label(k)}="{_escape(v)}"' for k, v in tags]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _fmt_num(v: float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _select(
    names: Iterable[str],
    rx: re.Pattern[str] | None,
    used: set[str] | None,
    values: dict[str, Any] | None = None,
) -> list[str]:
    out = []
    for n in names:
        if rx is not None and not rx.search(n):
            continue
        if used is not None and n not in used and not (values and values.get(n)):
            continue
        out.append(n)
    return sorted(out)


def _used_set(snap: dict, usedonly: bool) -> set[str] | None:
    return set(snap.get("used", ())) if usedonly else None


QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def _quantile(h: dict, bounds: tuple[float, ...], q: float) -> float | None:
    counts = h["counts"]
    total = sum(counts)
    if total == 0:
        return None
    target = q * total
    seen = 0.0
    lo = 0.0
    for i, c in enumerate(counts):
        hi = bounds[i] if i < len(bounds) else (lo * 2 or 1.0)
        if c and seen + c >= target:
            return lo + (hi - lo) * ((target - seen) / c)
        seen += c
        lo = hi
    return lo


quantile = _quantile  # (histogram, bounds, q): the metrics service sink's summaries


def _texts(snap: dict, rx: re.Pattern[str] | None, usedonly: bool) -> list[tuple[str, str]]:
    """Text readouts (Envoy's TextReadout), by name; with usedonly, those set."""
    texts = snap.get("text_readouts", {})
    return [(n, texts[n]) for n in _select(texts, rx, set() if usedonly else None, texts)]


def text(snap: dict, rx: re.Pattern[str] | None, usedonly: bool, bounds: tuple) -> str:
    used = _used_set(snap, usedonly)
    vals: dict[str, int] = {**snap["gauges"], **snap["counters"]}
    # Envoy lists text readouts first, their values in quotes (not escaped)
    lines = [f'{n}: "{v}"' for n, v in _texts(snap, rx, usedonly)]
    lines += [f"{n}: {vals[n]}" for n in _select(vals, rx, used, vals)]
    for n in _select(snap["histograms"], rx, used):
        h = snap["histograms"][n]
        if not h["count"]:
            lines.append(f"{n}: No recorded values")
            continue
        qs = []
        for q in QUANTILES:
            v = _quantile(h, bounds, q / 100)
            qs.append(
                f"P{q:g}({_fmt_num(round(v, 6)) if v is not None else 'nan'},"
                f"{_fmt_num(round(v, 6)) if v is not None else 'nan'})"
            )
        lines.append(f"{n}: " + " ".join(qs))
    return "\n".join(lines) + ("\n" if lines else "")


def as_json(snap: dict, rx: re.Pattern[str] | None, usedonly: bool, bounds: tuple) -> str:
    used = _used_set(snap, usedonly)
    vals: dict[str, int] = {**snap["gauges"], **snap["counters"]}
    stats: list[dict[str, Any]] = [{"name": n, "value": v} for n, v in _texts(snap, rx, usedonly)]
    stats += [{"name": n, "value": vals[n]} for n in _select(vals, rx, used, vals)]
    hnames = _select(snap["histograms"], rx, used)
    if hnames or not usedonly:
        computed = []
        for n in hnames:
            h = snap["histograms"][n]
            values = []
            for q in QUANTILES:
                v = _quantile(h, bounds, q / 100)
                values.append({"interval": None, "cumulative": v})
            computed.append({"name": n, "values": values})
        stats.append(
            {"histograms": {"supported_quantiles": list(QUANTILES), "computed_quantiles": computed}}
        )
    return json.dumps({"stats": stats}, separators=(",", ":"))


def prometheus(
    snap: dict,
    rx: re.Pattern[str] | None,
    usedonly: bool,
    bounds: tuple,
    text_readouts: bool = False,  # ?text_readouts: as gauges of value 0 with text_value
    view: Any = None,  # admin.stats_config.StatsView: the bootstrap's tag extractors
) -> str:
    used = _used_set(snap, usedonly)
    extractors = view.extractors if view is not None else None
    fixed = view.fixed if view is not None else ()
    out: list[str] = []

    def group(kind: str, source: dict[str, Any]) -> dict[str, list[tuple[list, str]]]:
        by: dict[str, list[tuple[list, str]]] = {}
        for n in _select(source, rx, used, source if kind != "histogram" else None):
            base, tags = extract_tags(n, extractors, fixed)
            by.setdefault(prom_name(base), []).append((tags, n))
        return by

    for kind, src in (("counter", snap["counters"]), ("gauge", snap["gauges"])):
        for pname, items in sorted(group(kind, src).items()):
            out.append(f"# TYPE {pname} {kind}")
            for tags, n in items:
                out.append(f"{pname}{_labels(tags)} {src[n]}")
    texts = dict(_texts(snap, rx, usedonly)) if text_readouts else {}
    for pname, items in sorted(group("text", texts).items()):
        out.append(f"# TYPE {pname} gauge")
        for tags, n in items:
            value = 'text_value="' + _escape(texts[n]) + '"'
            out.append(f"{pname}{_labels(tags, value)} 0")
    for pname, items in sorted(group("histogram", snap["histograms"]).items()):
        out.append(f"# TYPE {pname} histogram")
        for tags, n in items:
            h = snap["histograms"][n]
            custom = view.bounds_for(n) if view is not None else None
            cum = 0
            for i, c in enumerate(h["counts"]):
                cum += c
                if custom is not None and i < len(bounds) and bounds[i] not in custom:
                    continue  # histogram_bucket_settings: only the configured bounds
                le = _fmt_num(float(bounds[i])) if i < len(bounds) else "+Inf"
                le_label = 'le="' + le + '"'
                out.append(f"{pname}_bucket{_labels(tags, le_label)} {cum}")
            s = h["sum"]
            out.append(f"{pname}_sum{_labels(tags)} {_fmt_num(s) if not math.isnan(s) else 'NaN'}")
            out.append(f"{pname}_count{_labels(tags)} {h['count']}")
    return "\n".join(out) + "\n"


def merge(snaps: list[dict]) -> dict:
    """Sums worker snapshots: counters and gauges add, histogram buckets add, `used` unions."""
    out: dict[str, Any] = {
        "counters": {},
        "gauges": {},
        "histograms": {},
        "text_readouts": {},
        "used": set(),
    }
    for s in snaps:
        for n, v in s.get("text_readouts", {}).items():  # a set value wins over an empty one
            if v or n not in out["text_readouts"]:
                out["text_readouts"][n] = v
        for k in ("counters", "gauges"):
            d = out[k]
            for n, v in s[k].items():
                if k == "gauges" and n.startswith("overload."):
                    # each worker process watches its own memory: the most loaded one speaks
                    d[n] = max(d.get(n, 0), v)
                else:
                    d[n] = d.get(n, 0) + v
        for n, h in s["histograms"].items():
            cur = out["histograms"].get(n)
            if cur is None:
                out["histograms"][n] = {
                    "counts": list(h["counts"]),
                    "sum": h["sum"],
                    "count": h["count"],
                }
            else:
                cur["counts"] = [a + b for a, b in zip(cur["counts"], h["counts"])]
                cur["sum"] += h["sum"]
                cur["count"] += h["count"]
        out["used"] |= set(s.get("used", ()))
    return out
