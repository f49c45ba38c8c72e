"""The mixer's policy file (`--config FILE`): global quotas and rate-limit descriptors.

quotas:                                  # RLQS: one global limit per matching bucket
  - domain: mesh                         # optional: any domain when absent
    bucket: {name: checkout}             # every key/value must be in the bucket_id
    requests_per_second: 100
ratelimits:                              # rate-limit service (envoy.filters.http.ratelimit)
  - domain: mesh
    descriptor: [{key: path, value: /a}] # a key without value counts each value apart
    requests_per_unit: 10
    unit: second                         # second | minute | hour | day
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class PolicyError(ValueError):
    """A policy file that does not parse, with the path of the offending entry."""


@dataclass(frozen=True)
class QuotaRule:
    domain: str | None
    bucket: tuple[tuple[str, str], ...]  # (key, value) pairs the bucket_id must hold
    requests_per_second: float

    def matches(self, domain: str, bucket_id: dict[str, str]) -> bool:
        if self.domain is not None and self.domain != domain:
            return False
        return all(bucket_id.get(k) == v for k, v in self.bucket)


@dataclass(frozen=True)
class RateLimitRule:
    domain: str
    entries: tuple[tuple[str, str | None], ...]  # (key, value or None = any value)
    requests_per_unit: int
    unit: str

    def matches(self, domain: str, entries: list[tuple[str, str]]) -> bool:
        if domain != self.domain or len(entries) != len(self.entries):
            return False
        for (k, v), (rk, rv) in zip(entries, self.entries, strict=True):
            if k != rk or (rv is not None and v != rv):
                return False
        return True


@dataclass(frozen=True)
class Policy:
    quotas: tuple[QuotaRule, ...] = ()
    ratelimits: tuple[RateLimitRule, ...] = field(default=())

    def quota_for(self, domain: str, bucket_id: dict[str, str]) -> QuotaRule | None:
        """The first rule (file order) that matches, as an operator reads the file."""
        for q in self.quotas:
            if q.matches(domain, bucket_id):
                return q
        return None

    def ratelimit_for(self, domain: str, entries: list[tuple[str, str]]) -> RateLimitRule | None:
        for r in self.ratelimits:
            if r.matches(domain, entries):
                return r
        return None


def _positive(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PolicyError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def parse_policy(doc: object) -> Policy:
    if doc is None:
        return Policy()
    if not isinstance(doc, dict):
        raise PolicyError("expected a mapping at the top level")
    unknown = set(doc) - {"quotas", "ratelimits"}
    if unknown:
        raise PolicyError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    quotas = []
    for i, q in enumerate(doc.get("quotas") or []):
        where = f"quotas[{i}]"
        if not isinstance(q, dict):
            raise PolicyError(f"{where}: expected a mapping")
        bucket = q.get("bucket")
        bucket = {} if bucket is None else bucket
        if not isinstance(bucket, dict):
            raise PolicyError(f"{where}.bucket: expected a mapping of bucket_id keys to values")
        rps = _positive(q.get("requests_per_second"), f"{where}.requests_per_second")
        domain = q.get("domain")
        quotas.append(
            QuotaRule(
                None if domain is None else str(domain),
                tuple(sorted((str(k), str(v)) for k, v in bucket.items())),
                rps,
            )
        )
    rls = []
    for i, r in enumerate(doc.get("ratelimits") or []):
        where = f"ratelimits[{i}]"
        if not isinstance(r, dict) or "domain" not in r:
            raise PolicyError(f"{where}: expected a mapping with a domain")
        desc = r.get("descriptor")
        if not isinstance(desc, list) or not desc:
            raise PolicyError(f"{where}.descriptor: expected a list of {{key, value}} entries")
        entries = []
        for j, e in enumerate(desc):
            if not isinstance(e, dict) or "key" not in e:
                raise PolicyError(f"{where}.descriptor[{j}]: expected {{key, value}}")
            v = e.get("value")
            entries.append((str(e["key"]), None if v is None else str(v)))
        unit = str(r.get("unit", "second"))
        if unit not in UNITS:
            raise PolicyError(f"{where}.unit: one of {', '.join(UNITS)}, got {unit!r}")
        n = _positive(r.get("requests_per_unit"), f"{where}.requests_per_unit")
        if n != int(n):
            raise PolicyError(f"{where}.requests_per_unit: expected an integer")
        rls.append(RateLimitRule(str(r["domain"]), tuple(entries), int(n), unit))
    return Policy(tuple(quotas), tuple(rls))


def load_policy(path: str | None) -> Policy:
    if not path:
        return Policy()
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: invalid YAML: {e}") from None
    try:
        return parse_policy(doc)
    except PolicyError as e:
        raise PolicyError(f"{path}: {e}") from None
