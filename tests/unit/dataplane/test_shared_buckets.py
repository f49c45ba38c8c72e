"""Token buckets in a BucketRegion: one slot shared by processes, updated lock-free."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

from sofamesh._core.ratelimit import (
    BucketRegion,
    LocalRateLimit,
    TokenBucket,
    share_buckets,
    shared_region,
)
from sofamesh._core.stats import Store

HAMMER = textwrap.dedent(
    """
    import sys
    from sofamesh._core.ratelimit import BucketRegion, TokenBucket

    region = BucketRegion.attach(int(sys.argv[1]))
    tokens, attempts = int(sys.argv[2]), int(sys.argv[3])
    bucket = TokenBucket(tokens, 1, 3600.0, region=region, key="hammered")
    assert bucket.shared
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts together
    take = bucket.try_consume
    print(sum(1 for _ in range(attempts) if take()), flush=True)
    """
)


def test_processes_hammering_one_slot_admit_exactly_its_tokens():
    """Three processes each try to take 100,000 tokens at once from one bucket of 250,000
    (no refill within the test): together they get exactly 250,000, and each gets some
    (any two can take at most 200,000, so the third gets its share however the scheduler
    orders them on a busy machine)."""
    tokens, attempts, nproc = 250_000, 100_000, 3
    region = BucketRegion.create(16)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(region.fd), str(tokens), str(attempts)],
            pass_fds=[region.fd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(nproc)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        got = [int(p.stdout.readline()) for p in procs]
        for p in procs:
            assert p.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(got) == tokens, got
    assert all(g > 0 for g in got), got  # they did run against each other
    assert region.used == 1
    mine = TokenBucket(tokens, 1, 3600.0, region=region, key="hammered")
    assert mine.shared and mine.available == 0 and mine.try_consume() is False


def test_shared_bucket_keeps_envoy_fill_semantics():
    region = BucketRegion.create(8)
    a = TokenBucket(3, 2, 1.0, now=100.0, region=region, key="lrl")
    b = TokenBucket(3, 2, 1.0, now=105.0, region=BucketRegion.attach(region.fd), key="lrl")
    assert a.shared and b.shared
    assert [a.try_consume(100.0), b.try_consume(100.0), a.try_consume(100.5)] == [True] * 3
    assert b.try_consume(100.9) is False  # the first holder's start is epoch 0 for both
    assert a.try_consume(101.0) is True and b.try_consume(101.2) is True
    assert a.try_consume(101.5) is False
    assert b.available_at(110.0) == 3  # capped at max_tokens
    assert b.try_consume(99.0) is False  # a clock read behind another's never adds tokens


def test_a_reattached_bucket_keeps_its_tokens_and_other_configs_get_other_slots():
    region = BucketRegion.create(8)
    first = TokenBucket(2, 2, 60.0, region=region, key="listeners[0].http_filters[0]")
    assert first.try_consume() and first.try_consume() and not first.try_consume()
    del first  # a worker that died: its mapping is gone, the slot stays
    again = TokenBucket(
        2, 2, 60.0, region=BucketRegion.attach(region.fd), key="listeners[0].http_filters[0]"
    )
    assert again.shared and again.available == 0
    other_path = TokenBucket(2, 2, 60.0, region=region, key="listeners[1].http_filters[0]")
    other_rate = TokenBucket(5, 2, 60.0, region=region, key="listeners[0].http_filters[0]")
    private = TokenBucket(2, 2, 60.0)
    assert other_path.available == 2 and other_rate.available == 5 and private.available == 2
    assert not private.shared
    assert region.used == 3


def test_a_full_region_leaves_new_buckets_private_and_counts_it():
    region = BucketRegion.create(2)
    assert TokenBucket(1, 1, 1.0, region=region, key="a").shared
    assert TokenBucket(1, 1, 1.0, region=region, key="b").shared
    c = TokenBucket(1, 1, 1.0, region=region, key="c")
    assert not c.shared and c.try_consume() and not c.try_consume()
    assert TokenBucket(1, 1, 1.0, region=region, key="a").shared  # known keys still found
    assert (region.used, region.overflows) == (2, 1)


def _lrl(max_tokens: int) -> local_rate_limit_pb2.LocalRateLimit:
    msg = local_rate_limit_pb2.LocalRateLimit(stat_prefix="lrl")
    msg.token_bucket.max_tokens = max_tokens
    msg.token_bucket.fill_interval.seconds = 1
    return msg


def test_compiled_config_uses_the_shared_region_of_its_process(caplog):
    assert shared_region() is None  # one process: private buckets
    store = Store()
    assert not LocalRateLimit.from_proto(_lrl(5), store, "p").bucket.shared
    region = BucketRegion.create(1)
    share_buckets(region)
    try:
        a = LocalRateLimit.from_proto(_lrl(5), store, "p")
        assert a.bucket.shared and a.bucket.region is region
        b = LocalRateLimit.from_proto(_lrl(5), store, "q")  # the region is full
        assert not b.bucket.shared
    finally:
        share_buckets(None)
    assert store.counter("lrl.http_local_rate_limit.shared_bucket_overflow").value == 1
    assert "shared token bucket region is full" in caplog.text


def test_attach_refuses_what_is_not_a_region(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"\0" * 4096)
    with open(f, "rb+") as fh, pytest.raises(ValueError, match="not a sofamesh token bucket"):
        BucketRegion.attach(fh.fileno())


COUNTER = textwrap.dedent(
    """
    import sys
    from sofamesh._core.ratelimit import BucketRegion, SharedCount

    region = BucketRegion.attach(int(sys.argv[1]))
    count = SharedCount("cx", int(sys.argv[2]), region)
    print(count.value, flush=True)  # after taking back what a predecessor left
    for line in sys.stdin:
        if line.startswith("try"):
            print(int(count.try_acquire(int(line.split()[1]))), flush=True)
        elif line.startswith("release"):
            count.release()
            print(count.value, flush=True)
    """
)


def _counter(region: BucketRegion, worker: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", COUNTER, str(region.fd), str(worker)],
        pass_fds=[region.fd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _ask(p: subprocess.Popen, line: str) -> int:
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return int(p.stdout.readline())


def test_a_shared_count_limits_every_process_together_and_a_restart_takes_back():
    """Connection limits with workers (SharedCount): two processes share one limit of 3; a
    process killed while holding 2 is replaced by one with its worker index, which takes
    those 2 back from the total, so the limit admits again."""
    region = BucketRegion.create(16)
    a, b = _counter(region, 0), _counter(region, 1)
    try:
        assert int(a.stdout.readline()) == 0 and int(b.stdout.readline()) == 0
        assert [_ask(a, "try 3"), _ask(b, "try 3"), _ask(a, "try 3")] == [1, 1, 1]
        assert [_ask(b, "try 3"), _ask(a, "try 3")] == [0, 0]  # 3 of 3, whoever asks
        assert _ask(b, "release") == 2
        assert _ask(a, "try 3") == 1
        a.kill()  # holding 3 of them, releasing nothing
        a.wait()
        a = _counter(region, 0)  # its successor
        assert int(a.stdout.readline()) == 0  # b's one was released above: 3 - 3 taken back
        assert [_ask(a, "try 3"), _ask(b, "try 3"), _ask(a, "try 3"), _ask(b, "try 3")] == [
            1, 1, 1, 0,
        ]  # fmt: skip
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
