"""The bootstrap's `stats_config` (Envoy's tag extraction and stats matcher) and clusters'
`alt_stat_name`, applied where stats are read (the admin API), as Envoy shows them.

- `stats_tags`: tag extractors, each a regex whose first capture group is cut from the
  name and whose second (else the first) is the tag's value, or a `fixed_value` tag added
  to every stat; with `use_all_default_tags: false` (Istio) Envoy's default extractors are
  left out, else they follow the custom ones. Envoy runs them with std::regex (ECMAScript),
  whose POSIX classes inside brackets (`[_.[:digit:]]`, Istio's) are translated here.
- `stats_matcher`: a stat left out by `reject_all`, the exclusion list or the inclusion
  list is never created in Envoy: it is in no admin output (text, JSON, Prometheus).
- `histogram_bucket_settings`: a histogram's Prometheus buckets; bounds among Envoy's
  default ones (which the histograms count by) are summed from those, others are refused.
- `deferred_stat_options.enable_deferred_creation_stats`: a cluster's traffic stats are
  created at first use in Envoy: they are left out until one of them has counted.
- `Cluster.alt_stat_name`: a cluster's stats live under `cluster.<alt_stat_name>.`.
Work done per admin request, in Python, on a snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sofamesh._core.stats import DEFAULT_BOUNDS
from sofamesh.admin import stats_format

# POSIX classes inside a bracket expression -> Python class contents.
_POSIX = {
    "digit": r"0-9",
    "alpha": r"a-zA-Z",
    "alnum": r"a-zA-Z0-9",
    "upper": r"A-Z",
    "lower": r"a-z",
    "space": r"\s",
    "xdigit": r"0-9A-Fa-f",
    "punct": r"!-/:-@\[-`{-~",
    "word": r"\w",
}
_POSIX_RX = re.compile(r"\[:(\w+):\]")


class StatsConfigError(ValueError):
    pass


def translate_regex(rx: str) -> str:
    """An ECMAScript (std::regex) pattern as Python's `re` reads it: POSIX classes."""

    def sub(m: re.Match[str]) -> str:
        cls = _POSIX.get(m.group(1))
        if cls is None:
            raise StatsConfigError(f"unknown character class [:{m.group(1)}:] in {rx!r}")
        return cls

    return _POSIX_RX.sub(sub, rx)


Extractor = tuple[str, "re.Pattern[str]", str]


def _string_matcher(sm: Any) -> Callable[[str], bool]:
    kind = sm.WhichOneof("match_pattern")
    val = getattr(sm, kind) if kind != "safe_regex" else sm.safe_regex.regex
    ic = sm.ignore_case
    if kind == "safe_regex":
        pat = re.compile(val)
        return lambda s: pat.fullmatch(s) is not None
    if ic and kind != "contains":
        val = val.lower()
    if kind == "exact":
        return (lambda s: s.lower() == val) if ic else (lambda s: s == val)
    if kind == "prefix":
        return (lambda s: s.lower().startswith(val)) if ic else (lambda s: s.startswith(val))
    if kind == "suffix":
        return (lambda s: s.lower().endswith(val)) if ic else (lambda s: s.endswith(val))
    if kind == "contains":
        if ic:
            low = val.lower()
            return lambda s: low in s.lower()
        return lambda s: val in s
    raise StatsConfigError(f"stats_matcher: {kind} patterns are not implemented by sofamesh")


# A cluster's traffic stats, which `deferred_stat_options.enable_deferred_creation_stats`
# creates on first use (Envoy 1.40's lazily created ClusterTrafficStats, as its /stats shows).
TRAFFIC_STATS = frozenset(
    [
        "bind_errors",
        "original_dst_host_invalid",
        "retry_or_shadow_abandoned",
        "upstream_cx_active",
        "upstream_cx_close_notify",
        "upstream_cx_connect_attempts_exceeded",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_connect_with_0_rtt",
        "upstream_cx_destroy",
        "upstream_cx_destroy_local",
        "upstream_cx_destroy_local_with_active_rq",
        "upstream_cx_destroy_remote",
        "upstream_cx_destroy_remote_with_active_rq",
        "upstream_cx_destroy_with_active_rq",
        "upstream_cx_http1_total",
        "upstream_cx_http2_total",
        "upstream_cx_http3_total",
        "upstream_cx_idle_timeout",
        "upstream_cx_max_duration_reached",
        "upstream_cx_max_requests",
        "upstream_cx_none_healthy",
        "upstream_cx_overflow",
        "upstream_cx_pool_overflow",
        "upstream_cx_preconnect_skipped",
        "upstream_cx_protocol_error",
        "upstream_cx_rx_bytes_buffered",
        "upstream_cx_rx_bytes_total",
        "upstream_cx_total",
        "upstream_cx_tx_bytes_buffered",
        "upstream_cx_tx_bytes_total",
        "upstream_flow_control_backed_up_total",
        "upstream_flow_control_drained_total",
        "upstream_flow_control_paused_reading_total",
        "upstream_flow_control_resumed_reading_total",
        "upstream_http3_broken",
        "upstream_internal_redirect_failed_total",
        "upstream_internal_redirect_succeeded_total",
        "upstream_queue_overloaded",
        "upstream_rq_0rtt",
        "upstream_rq_active",
        "upstream_rq_active_overflow",
        "upstream_rq_cancelled",
        "upstream_rq_completed",
        "upstream_rq_maintenance_mode",
        "upstream_rq_max_duration_reached",
        "upstream_rq_pending_active",
        "upstream_rq_pending_failure_eject",
        "upstream_rq_pending_overflow",
        "upstream_rq_pending_total",
        "upstream_rq_per_try_idle_timeout",
        "upstream_rq_per_try_timeout",
        "upstream_rq_retry",
        "upstream_rq_retry_backoff_exponential",
        "upstream_rq_retry_backoff_ratelimited",
        "upstream_rq_retry_limit_exceeded",
        "upstream_rq_retry_overflow",
        "upstream_rq_retry_success",
        "upstream_rq_rx_reset",
        "upstream_rq_rx_reset_no_error",
        "upstream_rq_timeout",
        "upstream_rq_total",
        "upstream_rq_tx_reset",
        "upstream_cx_connect_ms",
        "upstream_cx_length_ms",
        "upstream_rq_per_cx",
    ]
)


class StatsView:
    """What a bootstrap's stats_config and the clusters' alt_stat_name do to a snapshot."""

    def __init__(self, stats_config: Any = None, deferred: bool = False) -> None:
        self.deferred = deferred
        self.extractors: list[Extractor] = list(stats_format.TAG_EXTRACTORS)
        self.fixed: list[tuple[str, str]] = []
        self.keep: Callable[[str], bool] | None = None
        # histogram_bucket_settings: (name matcher, bounds), the first match applies
        self.buckets: list[tuple[Callable[[str], bool], tuple[float, ...]]] = []
        if stats_config is None:
            return
        custom: list[Extractor] = []
        for t in stats_config.stats_tags:
            which = t.WhichOneof("tag_value")
            if which == "fixed_value":
                self.fixed.append((t.tag_name, t.fixed_value))
            elif which == "regex":
                custom.append((t.tag_name, re.compile(translate_regex(t.regex)), ""))
            else:  # a default extractor named by its tag name
                custom += [e for e in stats_format.TAG_EXTRACTORS if e[0] == t.tag_name]
        named = {e[0] for e in custom} | {n for n, _ in self.fixed}
        use_defaults = (
            stats_config.use_all_default_tags.value
            if stats_config.HasField("use_all_default_tags")
            else True
        )
        defaults = [e for e in stats_format.TAG_EXTRACTORS if e[0] not in named]
        self.extractors = custom + (defaults if use_defaults else [])
        for i, hb in enumerate(stats_config.histogram_bucket_settings):
            if hb.HasField("bins"):
                raise StatsConfigError(
                    f"histogram_bucket_settings[{i}].bins is not implemented by sofamesh"
                )
            bounds = tuple(sorted(set(hb.buckets)))
            if not set(bounds) <= set(DEFAULT_BOUNDS):
                # histograms keep counts per default bucket: other bounds cannot be derived
                raise StatsConfigError(
                    f"histogram_bucket_settings[{i}].buckets {list(hb.buckets)}: bounds other "
                    f"than Envoy's default ones ({list(DEFAULT_BOUNDS)}) are not implemented "
                    "by sofamesh"
                )
            self.buckets.append((_string_matcher(hb.match), bounds))
        m = stats_config.stats_matcher
        which = m.WhichOneof("stats_matcher") if stats_config.HasField("stats_matcher") else None
        if which == "reject_all":
            if m.reject_all:
                self.keep = lambda name: False
        elif which in ("inclusion_list", "exclusion_list"):
            pats = [_string_matcher(p) for p in getattr(m, which).patterns]
            if which == "inclusion_list":
                self.keep = lambda name: any(p(name) for p in pats)
            else:
                self.keep = lambda name: not any(p(name) for p in pats)

    def bounds_for(self, name: str) -> tuple[float, ...] | None:
        """The bucket bounds histogram_bucket_settings give histogram `name`, or None."""
        for match, bounds in self.buckets:
            if match(name):
                return bounds
        return None

    def apply(self, snap: dict, alt_names: dict[str, str]) -> dict:
        """The snapshot as Envoy's admin would hold it: cluster stats under their alt name,
        stats the matcher rejects left out, deferred traffic stats of unused clusters too."""
        if self.deferred:
            self._defer(snap, alt_names)
        if alt_names:
            rename = {f"cluster.{n}.": f"cluster.{a}." for n, a in alt_names.items() if a}

            def fix(name: str) -> str:
                if name.startswith("cluster."):
                    for old, new in rename.items():
                        if name.startswith(old):
                            return new + name[len(old) :]
                return name

            for k in ("counters", "gauges", "histograms"):
                snap[k] = {fix(n): v for n, v in snap[k].items()}
            snap["used"] = {fix(n) for n in snap.get("used", ())}
        keep = self.keep
        if keep is not None:  # text readouts too (Envoy's matcher rejects them alike)
            for k in ("counters", "gauges", "histograms", "text_readouts"):
                if k in snap:
                    snap[k] = {n: v for n, v in snap[k].items() if keep(n)}
            snap["used"] = {n for n in snap.get("used", ()) if keep(n)}
        return snap

    def _defer(self, snap: dict, clusters: dict[str, str]) -> None:
        """Hides each cluster's traffic stats until one of them has counted something."""
        used = snap.get("used", set())
        for name in clusters:
            names = [f"cluster.{name}.{s}" for s in TRAFFIC_STATS]
            live = False
            for n in names:
                v = snap["counters"].get(n, snap["gauges"].get(n))
                h = snap["histograms"].get(n)
                if n in used or v or (h is not None and h.get("count")):
                    live = True
                    break
            if not live:
                for k in ("counters", "gauges", "histograms"):
                    for n in names:
                        snap[k].pop(n, None)
            # made at first use in Envoy whatever the option, eagerly in sofamesh
            for n in [f"cluster.{name}.upstream_rq_{c}xx" for c in "12345"]:
                if not snap["counters"].get(n) and n not in used:
                    snap["counters"].pop(n, None)
            h = snap["histograms"].get(f"cluster.{name}.upstream_rq_time")
            if h is not None and not h.get("count"):
                del snap["histograms"][f"cluster.{name}.upstream_rq_time"]


def from_bootstrap(bootstrap: Any) -> StatsView:
    return StatsView(
        bootstrap.stats_config if bootstrap.HasField("stats_config") else None,
        deferred=bootstrap.deferred_stat_options.enable_deferred_creation_stats,
    )
