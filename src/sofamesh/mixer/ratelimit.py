"""Descriptor limits for the rate-limit service (`envoy.service.ratelimit.v3`), sans-IO.

Fixed windows per rule and descriptor value, as envoyproxy/ratelimit counts them: a window
starts at a multiple of the unit (unix time), `hits_addend` requests are added, and the
descriptor is over the limit once the window's count passes `requests_per_unit`. A descriptor
no rule matches is OK, unlimited (the answer carries no `current_limit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sofamesh.mixer.policy import UNITS, Policy, RateLimitRule


@dataclass(frozen=True)
class Verdict:
    over_limit: bool
    rule: RateLimitRule | None
    remaining: int
    reset_in: float  # seconds to the end of the window


class RateLimiter:
    def __init__(self, policy: Policy, clock: Callable[[], float]):
        self.policy = policy
        self.clock = clock  # wall clock: windows align on unix time, as the reference service's
        self.windows: dict[tuple, tuple[int, int]] = {}  # key -> (window start, count)
        self.over_limit = 0
        self.ok = 0

    def check(
        self, domain: str, descriptors: list[list[tuple[str, str]]], hits: int = 1
    ) -> list[Verdict]:
        now = self.clock()
        out = []
        for entries in descriptors:
            rule = self.policy.ratelimit_for(domain, entries)
            if rule is None:
                out.append(Verdict(False, None, 0, 0.0))
                continue
            unit = UNITS[rule.unit]
            start = int(now // unit) * unit
            key = (domain, tuple(entries), rule.unit)
            w_start, count = self.windows.get(key, (start, 0))
            if w_start != start:
                count = 0
            count += hits
            self.windows[key] = (start, count)
            over = count > rule.requests_per_unit
            out.append(
                Verdict(over, rule, max(rule.requests_per_unit - count, 0), start + unit - now)
            )
        if any(v.over_limit for v in out):
            self.over_limit += 1
        else:
            self.ok += 1
        if len(self.windows) > 100_000:  # bound memory: drop windows that have ended
            self.windows = {k: v for k, v in self.windows.items() if v[0] + UNITS[k[2]] > now}
        return out
