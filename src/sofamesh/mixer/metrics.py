"""Istio-style request metrics from access log entries, rendered as Prometheus text.

Series: `istio_requests_total{reporter,source,destination,response_code}` (counter) and
`istio_request_duration_milliseconds{...}` (histogram with Istio's default buckets); from TCP
entries (tcp_grpc), `istio_tcp_connections_closed_total{reporter,source,destination}`,
`istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`. A report grows the counts
of the series it names, so memory grows with distinct series, not requests.

Sidecars that stream stats to the metrics service (mixer/metrics_service.py) add counts and
histograms in bulk (`add_count`, `add_histogram`); such a reporter is counted from its stats
only: its access log entries no longer add to the request series (`use_metrics`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Istio's default buckets for istio_request_duration_milliseconds
DURATION_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip

Labels = tuple[str, str, str, str]  # reporter, source, destination, response_code
LABEL_NAMES = ("reporter", "source", "destination", "response_code")
TCP_LABEL_NAMES = ("reporter", "source", "destination")


@dataclass
class Series:
    count: int = 0  # requests
    duration_sum: float = 0.0
    hist_count: int = 0  # durations recorded (a stats-reported series has them apart)
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_MS))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class RequestMetrics:
    def __init__(self) -> None:
        self.series: dict[Labels, Series] = {}
        # TCP connections: (reporter, source, destination) -> [closed, received, sent bytes]
        self.tcp: dict[tuple[str, str, str], list[int]] = {}
        self.entries = 0  # access log entries received
        self.streams = 0  # access log streams opened
        self.metrics_reporters: set[str] = set()  # counted from their stats, not entries
        self.entries_skipped = 0  # HTTP entries of those reporters, not counted again

    def _series(self, labels: Labels) -> Series:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = Series()
        return s

    def use_metrics(self, reporter: str) -> None:
        """From now on `reporter` is counted from its stats: what its access log entries
        added goes (its cumulative counters include those requests), and further entries
        add nothing."""
        if reporter in self.metrics_reporters:
            return
        self.metrics_reporters.add(reporter)
        for k in [k for k in self.series if k[0] == reporter]:
            del self.series[k]

    def add_count(self, labels: Labels, n: int) -> None:
        self._series(labels).count += n

    def add_histogram(self, labels: Labels, buckets: list[int], total: float, n: int) -> None:
        """`n` durations summing to `total` ms, `buckets` per DURATION_BUCKETS_MS bucket (not
        cumulated; what is past the last bound is in `n` only)."""
        s = self._series(labels)
        s.hist_count += n
        s.duration_sum += total
        for i, c in enumerate(buckets):
            s.buckets[i] += c

    def record(self, labels: Labels, duration_ms: float) -> None:
        if labels[0] in self.metrics_reporters:
            self.entries_skipped += 1
            self.entries += 1
            return
        s = self._series(labels)
        s.count += 1
        s.hist_count += 1
        s.duration_sum += duration_ms
        i = bisect.bisect_left(DURATION_BUCKETS_MS, duration_ms)
        if i < len(s.buckets):
            s.buckets[i] += 1  # cumulated when rendered
        self.entries += 1

    def record_tcp(self, labels: tuple[str, str, str], received: int, sent: int) -> None:
        t = self.tcp.get(labels)
        if t is None:
            t = self.tcp[labels] = [0, 0, 0]
        t[0] += 1
        t[1] += received
        t[2] += sent
        self.entries += 1

    def total(self, **match: str) -> int:
        """Sum of istio_requests_total over the series whose labels equal `match`."""
        idx = {n: i for i, n in enumerate(LABEL_NAMES)}
        return sum(
            s.count for k, s in self.series.items() if all(k[idx[n]] == v for n, v in match.items())
        )

    def render(self) -> list[str]:
        out = [
            "# HELP istio_requests_total Requests reported to the mixer.",
            "# TYPE istio_requests_total counter",
        ]
        items = sorted(self.series.items())
        for k, s in items:
            if s.count:
                out.append(f"istio_requests_total{_labels(LABEL_NAMES, k)} {s.count}")
        out += [
            "# HELP istio_request_duration_milliseconds Request duration (ms).",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        for k, s in items:
            if not s.hist_count:
                continue
            cum = 0
            for le, n in zip(DURATION_BUCKETS_MS, s.buckets, strict=True):
                cum += n
                lab = _labels(LABEL_NAMES, k, f'le="{_num(le)}"')
                out.append(f"istio_request_duration_milliseconds_bucket{lab} {cum}")
            lab = _labels(LABEL_NAMES, k, 'le="+Inf"')
            out.append(f"istio_request_duration_milliseconds_bucket{lab} {s.hist_count}")
            lab = _labels(LABEL_NAMES, k)
            out.append(f"istio_request_duration_milliseconds_sum{lab} {_num(s.duration_sum)}")
            out.append(f"istio_request_duration_milliseconds_count{lab} {s.hist_count}")
        tcp = sorted(self.tcp.items())
        for i, (name, help_) in enumerate(
            (
                ("istio_tcp_connections_closed_total", "TCP connections closed"),
                ("istio_tcp_received_bytes_total", "Bytes received from the TCP clients"),
                ("istio_tcp_sent_bytes_total", "Bytes sent to the TCP clients"),
            )
        ):
            out += [f"# HELP {name} {help_} (reported).", f"# TYPE {name} counter"]
            out += [f"{name}{_labels(TCP_LABEL_NAMES, k)} {t[i]}" for k, t in tcp]
        return out
