"""The mixer's sans-IO cores: fair shares, assignments, descriptor windows, the policy file."""

from __future__ import annotations

import pytest

from sofamesh.mixer.policy import PolicyError, parse_policy
from sofamesh.mixer.quota import QuotaState, fair_shares, round_shares
from sofamesh.mixer.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_fair_shares_water_fill_and_headroom():
    # one light sidecar keeps what it asks for; the heavy ones split the rest equally
    assert fair_shares(100, {"a": 10, "b": 500, "c": 1000}) == {"a": 10, "b": 45, "c": 45}
    # demand below the limit: the spare 40 is split equally as headroom
    s = fair_shares(100, {"a": 10, "b": 50})
    assert s == {"a": 30, "b": 70}
    assert sum(fair_shares(7, {"a": 0, "b": 0, "c": 0}).values()) == pytest.approx(7)


def test_round_shares_add_up_to_the_limit():
    shares = fair_shares(100, {"a": 1000, "b": 1000, "c": 1000})
    r = round_shares(shares, 100)
    assert sum(r.values()) == 100 and sorted(r.values()) == [33, 33, 34]
    assert round_shares({"a": 0.2, "b": 9.8}, 10) == {"a": 1, "b": 10}  # at least 1 each


POLICY = parse_policy(
    {"quotas": [{"domain": "mesh", "bucket": {"name": "x"}, "requests_per_second": 100}]}
)


def test_quota_state_shares_follow_demand_and_expire():
    clock = Clock()
    q = QuotaState(POLICY, clock, ttl=5.0)
    b = {"name": "x", "extra": "kept"}
    [(_, a1)] = q.report("s1", "mesh", [(b, 900, 100, 1.0)])
    assert a1 is not None and a1.requests_per_second == 100 and a1.max_tokens == 10
    [(_, a2)] = q.report("s2", "mesh", [(b, 10, 0, 1.0)])
    assert a2 is not None and a2.requests_per_second == 10 + 0  # demand 10 < equal share
    clock.t += 1
    [(_, a1)] = q.report("s1", "mesh", [(b, 90, 900, 1.0)])
    assert a1 is not None and a1.requests_per_second == 90
    # an unchanged (within 5%) share returns the same assignment: Envoy keeps its bucket
    clock.t += 1
    [(_, again)] = q.report("s1", "mesh", [(b, 90, 880, 1.0)])
    assert again is a1
    # s2 silent past the TTL: s1 gets the whole limit again
    clock.t += 6
    [(_, a1)] = q.report("s1", "mesh", [(b, 90, 900, 1.0)])
    assert a1 is not None and a1.requests_per_second == 100
    # no rule for the bucket: ALLOW_ALL (None)
    assert q.report("s1", "mesh", [({"name": "y"}, 1, 0, 1.0)]) == [({"name": "y"}, None)]
    assert q.report("s1", "other", [(b, 1, 0, 1.0)]) == [(b, None)]
    q.forget("s1")
    assert q.snapshot() == []


def test_quota_zero_elapsed_uses_the_mixers_clock():
    clock = Clock()
    q = QuotaState(POLICY, clock)
    b = {"name": "x"}
    q.report("s1", "mesh", [(b, 1, 0, 0.0)])
    q.report("s2", "mesh", [(b, 1, 0, 0.0)])
    clock.t += 0.5
    q.report("s1", "mesh", [(b, 100, 0, 0.0)])  # 100 in 0.5 s: 200/s
    assert q.snapshot()[0]["demand"] == pytest.approx(200)


def test_ratelimiter_fixed_windows_per_value():
    clock = Clock()
    clock.t = 60.0 * 1000
    pol = parse_policy(
        {
            "ratelimits": [
                {"domain": "d", "descriptor": [{"key": "u", "value": "a"}], "requests_per_unit": 2},
                {
                    "domain": "d",
                    "descriptor": [{"key": "u"}],
                    "requests_per_unit": 1,
                    "unit": "minute",
                },
            ]
        }
    )
    rl = RateLimiter(pol, clock)
    a = [("u", "a")]
    assert [rl.check("d", [a])[0].over_limit for _ in range(3)] == [False, False, True]
    clock.t += 1  # next second: a new window
    v = rl.check("d", [a])[0]
    assert not v.over_limit and v.remaining == 1 and v.reset_in == pytest.approx(1.0)
    assert [rl.check("d", [[("u", "b")]])[0].over_limit for _ in range(2)] == [False, True]
    assert not rl.check("d", [[("u", "c")]])[0].over_limit  # counted per value
    v = rl.check("d", [[("k", "v")]])[0]
    assert v.rule is None and not v.over_limit
    assert rl.check("d", [a], hits=5)[0].over_limit


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"quotas": [{"bucket": {}, "requests_per_second": 0}]}, "quotas[0].requests_per_second"),
        ({"quotas": [{"bucket": [], "requests_per_second": 1}]}, "quotas[0].bucket"),
        ({"ratelimits": [{"domain": "d", "descriptor": []}]}, "ratelimits[0].descriptor"),
        (
            {
                "ratelimits": [
                    {
                        "domain": "d",
                        "descriptor": [{"key": "k"}],
                        "requests_per_unit": 1,
                        "unit": "week",
                    }
                ]
            },
            "ratelimits[0].unit",
        ),
        ({"quota": []}, "unknown top-level keys: quota"),
    ],
)
def test_policy_errors_name_the_entry(doc, where):
    with pytest.raises(PolicyError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(doc)


def test_pushes_rebalance_the_others_at_once():
    clock = Clock()
    q = QuotaState(POLICY, clock)
    b = {"name": "x"}
    [(_, a1)] = q.report("s1", "mesh", [(b, 500, 0, 1.0)])
    assert a1 is not None and a1.requests_per_second == 100
    assert q.take_pushes() == {}
    # a newcomer with unknown demand (first report, elapsed 0) gets an equal share, and s1's
    # smaller share is pushed to it now, not at its next report
    [(_, a2)] = q.report("s2", "mesh", [(b, 1, 0, 0.0)])
    assert a2 is not None and a2.requests_per_second == 50
    pushes = q.take_pushes()
    assert list(pushes) == ["s1"] and pushes["s1"][0][1].requests_per_second == 50
    assert q.take_pushes() == {}
    # s2 leaves: s1 gets the whole limit back, pushed
    q.forget("s2")
    assert q.take_pushes()["s1"][0][1].requests_per_second == 100
