"""The embedded store: durable group commits, TTL reaping, heartbeats, reload after restart."""

from __future__ import annotations

import asyncio

import pytest

from sofamesh.pilot.store import EmbeddedStore, StoreError, open_store


async def test_concurrent_puts_are_all_durable(tmp_path):
    s = EmbeddedStore(str(tmp_path))
    await s.open()
    seen: list[str] = []
    s.listeners.append(seen.append)
    await asyncio.gather(
        *(s.put(f"svc{i % 7}", f"i{i}", {"address": "10.0.0.1", "port": i + 1}) for i in range(200))
    )
    assert await s.delete("svc0", "i0") is True
    assert await s.delete("svc0", "i0") is False
    await s.close()
    assert len(seen) == 201
    s2 = EmbeddedStore(str(tmp_path))
    await s2.open()
    try:
        assert sum(len(v) for v in s2.records.values()) == 199
        assert s2.get("svc3", "i3") == {"address": "10.0.0.1", "port": 4}
        assert s2.get("svc0", "i0") is None
    finally:
        await s2.close()


async def test_ttl_reaping_and_heartbeats(tmp_path):
    s = EmbeddedStore(str(tmp_path), reap_interval=3600)  # reap by hand
    await s.open()
    try:
        await s.put("a", "keep", {"address": "10.0.0.1", "port": 1, "ttl_seconds": 0.2})
        await s.put("a", "lapse", {"address": "10.0.0.1", "port": 2, "ttl_seconds": 0.2})
        await s.put("a", "forever", {"address": "10.0.0.1", "port": 3, "ttl_seconds": 0})
        await asyncio.sleep(0.12)
        assert await s.heartbeat("a", "keep") is True
        assert await s.heartbeat("a", "nosuch") is False
        await asyncio.sleep(0.12)
        assert await s.reap() == 1
        assert sorted(s.records["a"]) == ["forever", "keep"]
        assert s.expires_in("a", "forever") is None and 0 < s.expires_in("a", "keep") <= 0.2
        await asyncio.sleep(0.25)
        assert await s.reap() == 1 and sorted(s.records["a"]) == ["forever"]
        assert s.expired == 2
    finally:
        await s.close()


async def test_reopened_store_gives_each_instance_a_fresh_ttl(tmp_path):
    s = EmbeddedStore(str(tmp_path), reap_interval=3600)
    await s.open()
    await s.put("a", "x", {"address": "10.0.0.1", "port": 1, "ttl_seconds": 5})
    await s.close()
    s2 = EmbeddedStore(str(tmp_path), reap_interval=3600)
    await s2.open()
    try:
        assert 4.5 < s2.expires_in("a", "x") <= 5
    finally:
        await s2.close()


def test_store_specs():
    assert open_store(None, "/tmp/x").kind == "embedded"
    assert open_store("etcd://127.0.0.1:2379", "/tmp/x").kind == "etcd"
    with pytest.raises(StoreError, match="etcd://host:port"):
        open_store("etcd://nohost", "/tmp/x")
    with pytest.raises(StoreError, match="expected"):
        open_store("redis://x:1", "/tmp/x")


async def test_racing_put_and_delete_end_the_same_in_memory_and_on_disk(tmp_path):
    s = EmbeddedStore(str(tmp_path), reap_interval=3600)
    await s.open()
    rec = {"address": "10.0.0.1", "port": 1}
    await s.put("a", "x", rec)
    # DELETE then PUT queued before either commits: the PUT wins, everywhere
    await asyncio.gather(s.delete("a", "x"), s.put("a", "x", {"address": "10.0.0.2", "port": 2}))
    assert s.get("a", "x") == {"address": "10.0.0.2", "port": 2}
    # PUT then DELETE: gone, everywhere
    await asyncio.gather(s.put("a", "y", rec), s.delete("a", "x"))
    assert s.get("a", "x") is None
    await s.close()
    s2 = EmbeddedStore(str(tmp_path), reap_interval=3600)
    await s2.open()
    try:
        assert s2.get("a", "x") is None and s2.get("a", "y") == rec
    finally:
        await s2.close()


async def test_a_failed_write_restores_the_mirror(tmp_path):
    s = EmbeddedStore(str(tmp_path), reap_interval=3600)
    await s.open()
    try:
        await s.put("a", "x", {"address": "10.0.0.1", "port": 1})
        s._db.execute("DROP TABLE instances")  # every later write fails
        with pytest.raises(StoreError):
            await s.put("a", "x", {"address": "10.0.0.9", "port": 9})
        assert s.get("a", "x") == {"address": "10.0.0.1", "port": 1}
        with pytest.raises(StoreError):
            await s.delete("a", "x")
        assert s.get("a", "x") == {"address": "10.0.0.1", "port": 1}
        with pytest.raises(StoreError):
            await s.put("b", "new", {"address": "10.0.0.3", "port": 3})
        assert s.get("b", "new") is None
    finally:
        await s.close()


def test_etcd_mirror_keeps_the_newest_revision():
    from sofamesh.pilot.store import EtcdStore

    s = EtcdStore("127.0.0.1", 2379)
    seen: list[str] = []
    s.listeners.append(seen.append)
    s._apply("a", "x", {"port": 2}, 12)  # the watch delivered a newer write first
    s._apply("a", "x", {"port": 1}, 10)  # our own older PUT's reply comes back late
    assert s.get("a", "x") == {"port": 2}
    s._apply("a", "x", {"port": 2}, 12)  # the same event twice: applied once
    s._apply("a", "x", None, 13)
    s._apply("a", "x", {"port": 2}, 12)  # a stale PUT after the delete does not resurrect it
    assert s.get("a", "x") is None
    assert seen == ["a", "a"]


def test_api_registry_skips_a_bad_stored_record():
    from sofamesh.pilot.api import ApiRegistry
    from sofamesh.pilot.store import BaseStore

    st = BaseStore()
    st.records["svc"] = {"good": {"address": "10.0.0.1", "port": 80}, "bad": {"port": "eighty"}}
    reg = ApiRegistry(st)
    snap = reg.snapshot()
    assert [i.instance_id for i in snap.instances["svc"]] == ["good"]
    assert reg.stats["bad_records"] == 1
