"""Global quota for the Rate Limit Quota Service (RLQS, `envoy.service.rate_limit_quota.v3`).

`QuotaState` is sans-IO (a clock is passed in): sidecars report per-bucket usage
(`num_requests_allowed + num_requests_denied` over the interval = the demand they saw), and
each report is answered with the reporter's share of the bucket's global limit as a token
bucket with a TTL. Shares are max-min fair (water-filling): a sidecar asking for less than an
equal share gets what it asks for, the rest is split among the others; what nobody asks for
is split equally, as headroom, so the shares always add up to the limit.

Envoy 1.40 reads a token bucket assignment as `tokens_per_fill / whole seconds of
fill_interval` (a fractional interval truncates to 0 and divides by it), so shares are
rounded to whole requests per second with a 1 s interval, by largest remainder so that the
rounded shares still add up to the limit. An unchanged assignment is sent again unchanged:
Envoy then keeps its token bucket (and its tokens) instead of starting a new, full one.

Several mixers share one limit through a store (`quota_store.EtcdQuotaStore`): each
publishes its own sidecars' demands (`local_demands`, announced through `listener`) and
hands the others' to `set_remote`; every mixer then computes the same fair split over all
sidecars of the bucket (named `<origin>/<client>`, so that ties break alike everywhere) and
assigns its own sidecars their part of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sofamesh.mixer.policy import Policy

BucketKey = tuple[str, tuple[tuple[str, str], ...]]  # (domain, sorted bucket_id items)


@dataclass
class Demand:
    rate: float  # requests/s seen in the sidecar's last interval (allowed + denied); inf: unknown
    seen: float  # clock() of the last report
    allowed_total: int = 0
    denied_total: int = 0


@dataclass
class Assignment:
    requests_per_second: int  # tokens_per_fill with a 1 s fill_interval
    max_tokens: int


@dataclass
class BucketState:
    limit: float
    bucket_id: dict[str, str]
    clients: dict[str, Demand] = field(default_factory=dict)
    assigned: dict[str, Assignment] = field(default_factory=dict)
    key: BucketKey = ("", ())


def fair_shares(limit: float, demands: dict[str, float]) -> dict[str, float]:
    """Max-min fair split of `limit`; leftover (when total demand is below it) split equally."""
    if not demands:
        return {}
    shares: dict[str, float] = {}
    remaining = limit
    order = sorted(demands, key=lambda c: (demands[c], c))
    for k, c in enumerate(order):
        equal = remaining / (len(order) - k)
        shares[c] = min(max(demands[c], 0.0), equal)
        remaining -= shares[c]
    if remaining > 1e-9:
        extra = remaining / len(order)
        for c in shares:
            shares[c] += extra
    return shares


def round_shares(shares: dict[str, float], total: int) -> dict[str, int]:
    """Whole requests/s adding up to `total` (largest remainder); each share at least 1."""
    floors = {c: math.floor(s) for c, s in shares.items()}
    left = total - sum(floors.values())
    by_remainder = sorted(shares, key=lambda c: (floors[c] - shares[c], c))
    for c in by_remainder[: max(left, 0)]:
        floors[c] += 1
    return {c: max(n, 1) for c, n in floors.items()}


class QuotaState:
    """Global quota per (domain, bucket_id): demand per sidecar, fair shares, assignments."""

    def __init__(
        self,
        policy: Policy,
        clock: Callable[[], float],
        ttl: float = 15.0,
        burst_fraction: float = 0.1,
        change_threshold: float = 0.05,
    ):
        self.policy = policy
        self.clock = clock
        self.ttl = ttl  # assignment_time_to_live; a sidecar silent for this long leaves the share
        self.burst_fraction = burst_fraction  # max_tokens = this fraction of a second's share
        self.change_threshold = change_threshold  # smaller relative changes keep the assignment
        self.buckets: dict[BucketKey, BucketState] = {}
        self._pushes: dict[str, list[tuple[dict[str, str], Assignment]]] = {}
        self.origin = ""  # this mixer's name in a shared store ("" when alone)
        # other mixers' sidecars: bucket -> mixer -> client -> local_records() entry
        self.remote: dict[BucketKey, dict[str, dict[str, dict]]] = {}
        # called with a bucket whose local demands changed (the store publishes them)
        self.listener: Callable[[BucketKey], None] | None = None

    def report(
        self,
        client: str,
        domain: str,
        usages: list[tuple[dict[str, str], int, int, float]],
    ) -> list[tuple[dict[str, str], Assignment | None]]:
        """One usage report: (bucket_id, allowed, denied, seconds elapsed) per bucket. Returns
        the assignment for each bucket (None: no quota rule, the sidecar is told ALLOW_ALL)."""
        now = self.clock()
        out: list[tuple[dict[str, str], Assignment | None]] = []
        for bucket_id, allowed, denied, elapsed in usages:
            rule = self.policy.quota_for(domain, bucket_id)
            if rule is None:
                out.append((bucket_id, None))
                continue
            key: BucketKey = (domain, tuple(sorted(bucket_id.items())))
            b = self.buckets.get(key)
            if b is None or b.limit != rule.requests_per_second:
                b = self.buckets[key] = BucketState(
                    rule.requests_per_second, dict(bucket_id), key=key
                )
            d = b.clients.get(client)
            if d is not None:
                # the mixer's clock between two reports of one stream: Envoy 1.40 truncates
                # time_elapsed to whole seconds (0 for a report soon after a bucket's first)
                elapsed = now - d.seen
            # a bucket's first report (elapsed 0) says nothing of the demand: until the next
            # one the newcomer asks for as much as any (an equal share), not for nothing
            rate = (allowed + denied) / max(elapsed, 1e-3) if elapsed > 0 else math.inf
            if d is None:
                d = b.clients[client] = Demand(rate, now)
            else:
                d.rate, d.seen = rate, now
            d.allowed_total += allowed
            d.denied_total += denied
            self._expire(b, now)
            out.append((bucket_id, self._assign(b, client)))
            self._reassign(b, skip=client)
            if self.listener is not None:
                self.listener(key)
        return out

    def _reassign(self, b: BucketState, skip: str | None = None) -> bool:
        changed = False
        for other in b.clients:
            if other != skip:
                old = b.assigned.get(other)
                a = self._assign(b, other)
                if a is not old:
                    changed = True
                    self._pushes.setdefault(other, []).append((b.bucket_id, a))
        return changed

    def local_records(self, key: BucketKey) -> dict[str, dict]:
        """This mixer's sidecars of a bucket: demand (None: not known yet), assignment and
        totals, as the store publishes them to the other mixers."""
        b = self.buckets.get(key)
        if b is None:
            return {}
        out = {}
        for c, d in b.clients.items():
            a = b.assigned.get(c)
            out[c] = {
                "demand": None if math.isinf(d.rate) else d.rate,
                "assigned": a.requests_per_second if a else 0,
                "allowed": d.allowed_total,
                "denied": d.denied_total,
            }
        return out

    def set_remote(self, key: BucketKey, origin: str, records: dict[str, dict]) -> None:
        """Another mixer's sidecars of a bucket are now `records` ({} when it has none
        left): this mixer's own sidecars get their new shares (pushed)."""
        held = self.remote.setdefault(key, {})
        if records:
            held[origin] = records
        elif held.pop(origin, None) is None:
            if not held:
                del self.remote[key]
            return
        if not held:
            del self.remote[key]
        b = self.buckets.get(key)
        if b is not None and self._reassign(b) and self.listener is not None:
            self.listener(key)

    def take_pushes(self) -> dict[str, list[tuple[dict[str, str], Assignment]]]:
        """Assignments of other sidecars that the last reports changed (beyond the
        threshold): sent to them now rather than at their next report, so that the shares
        held at any moment add up to the limit (a newcomer does not wait for the others'
        reports to get its share, nor do they keep a larger one meanwhile)."""
        out, self._pushes = self._pushes, {}
        return out

    def forget(self, client: str) -> None:
        """The sidecar's stream ended: its share goes back to the others (pushed)."""
        self._pushes.pop(client, None)
        for key, b in self.buckets.items():
            if b.clients.pop(client, None) is None:
                continue
            b.assigned.pop(client, None)
            self._reassign(b)
            if self.listener is not None:
                self.listener(key)

    def _expire(self, b: BucketState, now: float) -> None:
        for c in [c for c, d in b.clients.items() if now - d.seen > self.ttl]:
            del b.clients[c]
            b.assigned.pop(c, None)

    def _name(self, client: str) -> str:
        return f"{self.origin}/{client}" if self.origin else client

    def _demands(self, b: BucketState) -> dict[str, float]:
        """Every sidecar of the bucket, this mixer's and (with a store) the others'."""
        out = {self._name(c): d.rate for c, d in b.clients.items()}
        for origin, records in self.remote.get(b.key, {}).items():
            for c, r in records.items():
                rate = r.get("demand")
                out[f"{origin}/{c}"] = math.inf if rate is None else float(rate)
        return out

    def _assign(self, b: BucketState, client: str) -> Assignment:
        total = max(round(b.limit), 1)
        shares = round_shares(fair_shares(float(total), self._demands(b)), total)
        n = shares[self._name(client)]
        old = b.assigned.get(client)
        if old is not None and abs(old.requests_per_second - n) <= self.change_threshold * max(
            old.requests_per_second, 1
        ):
            return old
        a = Assignment(n, max(1, round(n * self.burst_fraction)))
        b.assigned[client] = a
        return a

    def snapshot(self) -> list[dict]:
        """Per bucket and sidecar: limit, demand, assignment, totals (for /metrics)."""
        rows = []
        for (domain, items), b in sorted(self.buckets.items()):
            for c, d in sorted(b.clients.items()):
                a = b.assigned.get(c)
                rows.append(
                    {
                        "domain": domain,
                        "bucket": ",".join(f"{k}={v}" for k, v in items),
                        "client": c,
                        "limit": b.limit,
                        "demand": d.rate,
                        "assigned": a.requests_per_second if a else 0,
                        "allowed": d.allowed_total,
                        "denied": d.denied_total,
                    }
                )
        return rows

    def buckets_view(self) -> list[dict]:
        """Per bucket: limit, the sum of the shares, and each sidecar (this mixer's and,
        with a store, the others') with its mixer, demand, share and totals; for the page."""
        keys = sorted(set(self.buckets) | set(self.remote))
        out = []
        for key in keys:
            domain, items = key
            b = self.buckets.get(key)
            if b is not None:
                limit: float | None = b.limit
            else:
                rule = self.policy.quota_for(domain, dict(items))
                limit = rule.requests_per_second if rule is not None else None
            clients = [
                {"mixer": self.origin or "this", "client": c, "local": True, **r}
                for c, r in sorted(self.local_records(key).items())
            ]
            for origin, records in sorted(self.remote.get(key, {}).items()):
                clients += [
                    {"mixer": origin, "client": c, "local": False, **r}
                    for c, r in sorted(records.items())
                ]
            out.append(
                {
                    "domain": domain,
                    "bucket": ",".join(f"{k}={v}" for k, v in items),
                    "limit": limit,
                    "assigned": sum(c.get("assigned") or 0 for c in clients),
                    "demand": sum(c.get("demand") or 0 for c in clients),
                    "allowed": sum(c.get("allowed") or 0 for c in clients),
                    "denied": sum(c.get("denied") or 0 for c in clients),
                    "clients": clients,
                }
            )
        return out
