"""The mesh's service graph for the mixer's web page (`GET /api/graph`), from its reports.

Sans-IO (a clock is passed in). `sample()` (once a second, from the server) keeps the
cumulative counts and latency histograms of every edge for the last `window` seconds, so that
`graph()` can give each edge its request rate, error rate and p50/p99 over that window
beside its totals. An edge is (source, destination) summed over reporters and response
codes; an error is a 5xx or no response at all (code 0), as Istio's dashboards count them;
4xx (quota and RBAC denials among them) are counted apart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sofamesh.mixer.metrics import DURATION_BUCKETS_MS, RequestMetrics
from sofamesh.mixer.quota import QuotaState

Edge = tuple[str, str]  # source, destination


@dataclass
class EdgeTotals:
    requests: int = 0
    errors: int = 0  # 5xx and no response (code 0)
    client_errors: int = 0  # 4xx
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_MS))
    codes: dict[str, int] = field(default_factory=dict)
    reporters: set[str] = field(default_factory=set)


def service_name(cluster: str) -> str:
    """Istio's `outbound|port|subset|host` names the host's service; anything else as is."""
    if cluster.startswith("outbound|"):
        host = cluster.split("|", 3)[-1]
        return host.removesuffix(".svc.cluster.local") or cluster
    return cluster


def edge_totals(metrics: RequestMetrics) -> dict[Edge, EdgeTotals]:
    out: dict[Edge, EdgeTotals] = {}
    for (reporter, source, destination, code), s in metrics.series.items():
        key = (source, service_name(destination))
        e = out.get(key)
        if e is None:
            e = out[key] = EdgeTotals()
        e.requests += s.count
        if code == "0" or code.startswith("5"):
            e.errors += s.count
        elif code.startswith("4"):
            e.client_errors += s.count
        e.duration_sum += s.duration_sum
        for i, n in enumerate(s.buckets):
            e.buckets[i] += n
        if s.count:  # a stats-reported duration histogram has no code (and no count)
            e.codes[code] = e.codes.get(code, 0) + s.count
        e.reporters.add(reporter)
    return out


def quantile(q: float, buckets: list[int], count: int) -> float | None:
    """The q-quantile (ms) of a histogram, interpolated within its bucket as Prometheus'
    histogram_quantile does; requests past the last bucket count as its bound."""
    if count <= 0:
        return None
    rank = q * count
    cum = 0
    lower = 0.0
    for le, n in zip(DURATION_BUCKETS_MS, buckets, strict=True):
        if n and cum + n >= rank:
            return lower + (le - lower) * max(rank - cum, 0.0) / n
        cum += n
        lower = le
    return float(DURATION_BUCKETS_MS[-1])


@dataclass
class _Sample:
    at: float
    edges: dict[Edge, tuple[int, int, int, tuple[int, ...]]]  # requests, errors, 4xx, buckets


class TrafficGraph:
    def __init__(
        self,
        metrics: RequestMetrics,
        quota: QuotaState,
        clock: Callable[[], float],
        window: float = 10.0,
    ):
        self.metrics = metrics
        self.quota = quota
        self.clock = clock
        self.window = window
        self._samples: deque[_Sample] = deque()

    def sample(self) -> None:
        now = self.clock()
        edges = {
            k: (e.requests, e.errors, e.client_errors, tuple(e.buckets))
            for k, e in edge_totals(self.metrics).items()
        }
        self._samples.append(_Sample(now, edges))
        # keep one sample at least `window` old: the start of the window
        while len(self._samples) > 2 and now - self._samples[1].at >= self.window:
            self._samples.popleft()

    def graph(self) -> dict:
        now = self.clock()
        totals = edge_totals(self.metrics)
        base = self._samples[0] if self._samples else None
        span = now - base.at if base is not None else 0.0
        edges = []
        nodes: dict[str, dict] = {}
        for (src, dst), e in sorted(totals.items()):
            then = base.edges.get((src, dst), (0, 0, 0, ())) if base is not None else None
            if then is not None and span > 0:
                n = e.requests - then[0]
                rps = n / span
                recent_buckets = (
                    [a - b for a, b in zip(e.buckets, then[3], strict=True)]
                    if then[3]
                    else list(e.buckets)
                )
            else:
                n, rps, recent_buckets = 0, None, []
            if n > 0 and then is not None:
                error_rate = (e.errors - then[1]) / n
                client_error_rate = (e.client_errors - then[2]) / n
                hist, hist_count, recent = recent_buckets, sum(recent_buckets), True
            else:  # nothing in the window: the totals
                error_rate = e.errors / e.requests if e.requests else 0.0
                client_error_rate = e.client_errors / e.requests if e.requests else 0.0
                hist, hist_count, recent = e.buckets, sum(e.buckets), False
            edges.append(
                {
                    "source": src,
                    "destination": dst,
                    "requests": e.requests,
                    "errors": e.errors,
                    "client_errors": e.client_errors,
                    "codes": dict(sorted(e.codes.items())),
                    "reporters": sorted(e.reporters),
                    "rps": rps,
                    "recent": recent,  # rates and latency over the window (else totals)
                    "error_rate": error_rate,
                    "client_error_rate": client_error_rate,
                    "p50_ms": quantile(0.5, hist, hist_count),
                    "p99_ms": quantile(0.99, hist, hist_count),
                    "mean_ms": e.duration_sum / e.requests if e.requests else None,
                }
            )
            for name, direction in ((src, "out"), (dst, "in")):
                node = nodes.setdefault(
                    name, {"id": name, "requests_in": 0, "requests_out": 0, "rps_in": 0.0}
                )
                node[f"requests_{direction}"] += e.requests
                if direction == "in" and rps is not None:
                    node["rps_in"] += rps
        return {
            "window_s": round(span, 3),
            "entries": self.metrics.entries,
            "streams": self.metrics.streams,
            "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
            "edges": edges,
            "quota": self.quota.buckets_view(),
        }
