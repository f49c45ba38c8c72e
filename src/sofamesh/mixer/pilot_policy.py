"""`sofamesh mixer --pilot URL`: the pilot's rate policies as global quotas.

A rate policy "service X takes at most R requests/s in total" (pilot/policy.py) reaches the
sidecars as a rate_limit_quota filter with the bucket `{service: X}` in domain `sofamesh`
(pilot/policy_xds.py); this loop reads `GET /v1/policies` from the pilot every `interval`
and makes each one a quota rule of the mixer, after the `--config` file's own rules (which
therefore win when both name one bucket). A pilot that cannot be reached leaves the last
rules in place (counted in `errors`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import aiohttp

from sofamesh.mixer.policy import Policy, QuotaRule

log = logging.getLogger("sofamesh.mixer.pilot")

QUOTA_DOMAIN = "sofamesh"  # pilot/policy_xds.py's QUOTA_DOMAIN


def quotas_from(doc: object) -> tuple[QuotaRule, ...]:
    """The quota rules of a `GET /v1/policies` answer (other kinds ignored)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), list):
        raise TypeError('expected {"policies": [...]}')
    out = []
    for p in doc["policies"]:
        if not isinstance(p, dict) or p.get("kind") != "rate":
            continue
        rps = p.get("requests_per_second")
        service = p.get("service")
        if not isinstance(service, str) or isinstance(rps, bool) or not isinstance(rps, int):
            continue
        out.append(QuotaRule(QUOTA_DOMAIN, (("service", service),), float(rps)))
    return tuple(out)


class PilotPolicies:
    def __init__(self, mixer, base_url: str, file_policy: Policy, interval: float = 1.0):
        self.mixer = mixer  # sofamesh.mixer.server.Mixer
        self.url = base_url.rstrip("/") + "/v1/policies"
        self.file_policy = file_policy
        self.interval = interval
        self.errors = 0
        self.updates = 0
        self._rules: tuple[QuotaRule, ...] = ()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def apply(self, rules: tuple[QuotaRule, ...]) -> None:
        if rules == self._rules:
            return
        self._rules = rules
        self.updates += 1
        merged = replace(self.file_policy, quotas=self.file_policy.quotas + rules)
        self.mixer.policy = merged
        self.mixer.quota.policy = merged  # read per report: the next one uses it
        log.info("pilot policies: %d rate quotas", len(rules))

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(self.interval * 3, 2.0))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(self.url) as r:
                        if r.status != 200:
                            raise ValueError(f"HTTP {r.status}")
                        self.apply(quotas_from(await r.json()))
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - keep the last rules, try again
                    self.errors += 1
                    if self.errors in (1, 10) or self.errors % 100 == 0:
                        log.warning("pilot policies from %s: %s (keeping the last)", self.url, e)
                await asyncio.sleep(self.interval)
