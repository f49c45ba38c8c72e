"""Where the open registry API keeps its instances: an embedded on-disk store or etcd.

Both keep an in-memory mirror (`records[service][instance_id] -> record dict`) and call
`listener(service)` after every change, whether it came through this process or (etcd)
another pilot replica. TTLs: the embedded store expires instances itself (heartbeats live in
memory; after a restart every stored instance gets one fresh TTL, since no heartbeat could
reach a stopped pilot); the etcd store attaches each instance to an etcd lease, so expiry is
shared by every replica.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("sofamesh.pilot.store")

Listener = Callable[[str], None]


class StoreError(Exception):
    pass


class BaseStore:
    kind = "base"

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict]] = {}
        self.listeners: list[Listener] = []
        self.expired = 0

    def _emit(self, service: str) -> None:
        for cb in self.listeners:
            try:
                cb(service)
            except Exception:
                log.exception("store listener failed")

    def _mirror_put(self, service: str, iid: str, rec: dict) -> None:
        self.records.setdefault(service, {})[iid] = rec

    def _mirror_del(self, service: str, iid: str) -> bool:
        insts = self.records.get(service)
        if not insts or iid not in insts:
            return False
        del insts[iid]
        if not insts:
            del self.records[service]
        return True

    def get(self, service: str, iid: str) -> dict | None:
        return self.records.get(service, {}).get(iid)

    def expires_in(self, service: str, iid: str) -> float | None:
        return None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, service: str, iid: str, rec: dict) -> None:
        raise NotImplementedError

    async def heartbeat(self, service: str, iid: str) -> bool:
        raise NotImplementedError

    async def delete(self, service: str, iid: str) -> bool:
        raise NotImplementedError


class EmbeddedStore(BaseStore):
    """SQLite in `data_dir/registry.db` (WAL, synchronous=FULL: a registration acknowledged
    is on disk). Heartbeats touch memory only."""

    kind = "embedded"

    def __init__(self, data_dir: str, reap_interval: float = 0.2, table: str = "instances"):
        super().__init__()
        self.data_dir = data_dir
        self.table = table  # "instances"; "policies" for the pilot's policies (pilot/policy.py)
        self.reap_interval = reap_interval
        self._db: sqlite3.Connection | None = None
        self._deadline: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._reaper: asyncio.Task | None = None
        self._pending: list[tuple[str, tuple, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def open(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        path = os.path.join(self.data_dir, "registry.db")
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (service TEXT NOT NULL,"
            " instance_id TEXT NOT NULL,"
            " record TEXT NOT NULL, PRIMARY KEY (service, instance_id))"
        )
        self._db = db
        now = time.monotonic()
        rows = db.execute(f"SELECT service, instance_id, record FROM {self.table}")
        for service, iid, body in rows:
            try:
                rec = json.loads(body)
            except ValueError:
                log.error("unreadable stored record %s/%s: dropped", service, iid)
                continue
            self._mirror_put(service, iid, rec)
            self._arm(service, iid, rec, now)
        log.info("embedded store %s: %d services loaded", path, len(self.records))
        self._reaper = asyncio.ensure_future(self._reap_loop())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
        if self._flusher is not None:
            try:
                await self._flusher  # acknowledged writes reach the disk before closing
            except Exception as e:  # noqa: BLE001
                log.debug("ignored during shutdown/cleanup: %r", e)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _arm(self, service: str, iid: str, rec: dict, now: float) -> None:
        ttl = rec.get("ttl_seconds") or 0
        if ttl > 0:
            deadline = now + ttl
            self._deadline[(service, iid)] = deadline
            heapq.heappush(self._heap, (deadline, service, iid))
        else:
            self._deadline.pop((service, iid), None)

    def expires_in(self, service: str, iid: str) -> float | None:
        d = self._deadline.get((service, iid))
        return None if d is None else max(0.0, d - time.monotonic())

    async def _write(self, sql: str, args: tuple) -> None:
        """Group commit: writes that arrive while a commit is in flight share the next one
        (one fsync for the batch). Returns once this write is durable."""
        if self._db is None:
            raise StoreError("store is closed")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((sql, args, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._commit, [(sql, args) for sql, args, _ in batch])
            except Exception as e:  # noqa: BLE001 - every waiter learns the write failed
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError(f"store write failed: {e}"))
                continue
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _commit(self, batch: list[tuple[str, tuple]]) -> None:
        db = self._db
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in batch:
                db.execute(sql, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # The mirror changes when a write is queued, so mirror and disk see writes in one order
    # (a DELETE racing a PUT ends the same in both); a failed write restores the mirror.

    async def put(self, service: str, iid: str, rec: dict) -> None:
        prev = self.get(service, iid)
        self._mirror_put(service, iid, rec)
        self._arm(service, iid, rec, time.monotonic())
        self._emit(service)
        try:
            await self._write(
                f"INSERT OR REPLACE INTO {self.table} (service, instance_id, record)"
                " VALUES (?, ?, ?)",
                (service, iid, json.dumps(rec, sort_keys=True)),
            )
        except StoreError:
            self._restore(service, iid, rec, prev)
            raise

    async def heartbeat(self, service: str, iid: str) -> bool:
        rec = self.get(service, iid)
        if rec is None:
            return False
        self._arm(service, iid, rec, time.monotonic())
        return True

    async def delete(self, service: str, iid: str) -> bool:
        prev = self.get(service, iid)
        if prev is None:
            return False
        self._deadline.pop((service, iid), None)
        self._mirror_del(service, iid)
        self._emit(service)
        try:
            await self._write(
                f"DELETE FROM {self.table} WHERE service = ? AND instance_id = ?", (service, iid)
            )
        except StoreError:
            self._restore(service, iid, None, prev)
            raise
        return True

    def _restore(self, service: str, iid: str, ours: dict | None, prev: dict | None) -> None:
        if self.get(service, iid) is not ours:
            return  # a later write already replaced ours
        if prev is None:
            self._mirror_del(service, iid)
            self._deadline.pop((service, iid), None)
        else:
            self._mirror_put(service, iid, prev)
            self._arm(service, iid, prev, time.monotonic())
        self._emit(service)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:
                log.exception("TTL reaper failed")

    async def reap(self) -> int:
        now = time.monotonic()
        n = 0
        while self._heap and self._heap[0][0] <= now:
            deadline, service, iid = heapq.heappop(self._heap)
            if self._deadline.get((service, iid)) != deadline:
                continue  # refreshed since (stale heap entry)
            log.info("instance %s/%s: TTL lapsed, removed", service, iid)
            self.expired += 1
            await self.delete(service, iid)
            n += 1
        return n


class EtcdStore(BaseStore):
    """Instances under `<prefix>/<service>/<instance_id>` as JSON, each on its own lease
    when it has a TTL. Every replica watches the prefix, so all mirrors converge."""

    kind = "etcd"

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str = "/sofamesh/registry/instances/",
        timeout: float = 3.0,
    ):
        super().__init__()
        self.host, self.port = host, port
        self.timeout = timeout
        self.prefix = prefix.encode()
        self._client: Any = None  # aetcd.Client once opened
        self._watcher: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self.relists = 0
        self._revs: dict[tuple[str, str], int] = {}  # etcd revision of each key's last change
        self._floor = 0  # revision of the last full list

    def _key(self, service: str, iid: str) -> bytes:
        return self.prefix + f"{service}/{iid}".encode()

    def _split(self, key: bytes) -> tuple[str, str] | None:
        rest = key[len(self.prefix) :].decode(errors="replace")
        service, sep, iid = rest.partition("/")
        return (service, iid) if sep else None

    async def open(self) -> None:
        import aetcd

        self._client = aetcd.Client(host=self.host, port=self.port, timeout=self.timeout)
        await self._load()
        self._watcher = asyncio.ensure_future(self._watch_loop())

    async def _load(self) -> int:
        rng = await self._client.get_prefix(self.prefix)
        fresh: dict[str, dict[str, dict]] = {}
        revs: dict[tuple[str, str], int] = {}
        for kv in rng:
            parts = self._split(kv.key)
            if parts is None:
                continue
            try:
                rec = json.loads(kv.value)
            except ValueError:
                log.error("unreadable etcd record %r: ignored", kv.key)
                continue
            fresh.setdefault(parts[0], {})[parts[1]] = rec
            revs[parts] = kv.mod_revision
        touched = set(fresh) | set(self.records)
        self.records = fresh
        self._revs = revs
        self._floor = rng.header.revision
        for s in touched:
            self._emit(s)
        return rng.header.revision

    def _apply(self, service: str, iid: str, rec: dict | None, rev: int) -> None:
        """Apply one change at etcd revision `rev` unless the mirror already holds a newer
        one (a local write's reply and the watch event for it arrive in either order)."""
        key = (service, iid)
        if rev <= self._revs.get(key, self._floor):
            return
        self._revs[key] = rev
        if rec is not None:
            self._mirror_put(service, iid, rec)
        elif not self._mirror_del(service, iid):
            return
        self._emit(service)

    async def _watch_loop(self) -> None:
        rev = None
        while not self._stopping:
            try:
                if rev is None:
                    rev = await self._load()
                watch = await self._client.watch_prefix(self.prefix, start_revision=rev + 1)
                async for ev in watch:
                    parts = self._split(ev.kv.key)
                    rev = max(rev, ev.kv.mod_revision)
                    if parts is None:
                        continue
                    service, iid = parts
                    if ev.kind == "PUT":
                        try:
                            rec = json.loads(ev.kv.value)
                        except ValueError:
                            log.error("unreadable etcd record %r: ignored", ev.kv.key)
                            continue
                        self._apply(service, iid, rec, ev.kv.mod_revision)
                    else:  # for a DELETE event, mod_revision is the deletion's revision
                        self._apply(service, iid, None, ev.kv.mod_revision)
                # the server ended the watch (e.g. its revision was compacted): re-list
                log.info("etcd watch ended at revision %s: re-listing", rev)
                self.relists += 1
                rev = None
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd away: re-list when it is back
                log.warning("etcd watch failed (%s): retrying", e)
                self.relists += 1
                rev = None
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                log.debug("ignored during shutdown/cleanup: %r", e)
        if self._client is not None:
            await self._client.close()

    async def put(self, service: str, iid: str, rec: dict) -> None:
        old = self.get(service, iid)
        ttl = rec.get("ttl_seconds") or 0
        rec = dict(rec)
        lease_id = None
        if ttl > 0:
            lease = await self._client.lease(max(1, round(ttl)))
            lease_id = lease.id
            rec["lease"] = lease_id
        res = await self._client.put(
            self._key(service, iid), json.dumps(rec, sort_keys=True).encode(), lease=lease_id
        )
        self._apply(service, iid, rec, res.header.revision)
        if old and old.get("lease") and old.get("lease") != lease_id:
            try:
                await self._client.revoke_lease(old["lease"])
            except Exception as e:  # noqa: BLE001 - already expired
                log.debug("ignored during shutdown/cleanup: %r", e)

    async def heartbeat(self, service: str, iid: str) -> bool:
        rec = self.get(service, iid)
        if rec is None:
            got = await self._client.get(self._key(service, iid))
            if got is None:
                return False
            rec = json.loads(got.value)
        lease_id = rec.get("lease")
        if not lease_id:
            return True
        reply = await self._client.refresh_lease(lease_id)
        return reply is not None and reply.TTL > 0

    def expires_in(self, service: str, iid: str) -> float | None:
        return None

    async def delete(self, service: str, iid: str) -> bool:
        rec = self.get(service, iid)
        res = await self._client.delete(self._key(service, iid), prev_kv=True)
        found = res is not None and (getattr(res, "deleted", 1) or 0) > 0
        if found:
            self._apply(service, iid, None, res.header.revision)
        elif self._mirror_del(service, iid):  # etcd had it no more: our mirror was stale
            self._emit(service)
        if rec and rec.get("lease"):
            try:
                await self._client.revoke_lease(rec["lease"])
            except Exception as e:  # noqa: BLE001
                log.debug("ignored during shutdown/cleanup: %r", e)
        return found


def open_store(spec: str | None, data_dir: str, kind: str = "instances") -> BaseStore:
    """`None`/"embedded" -> EmbeddedStore(data_dir); "etcd://host:port[/prefix]" -> EtcdStore.
    kind "policies": the same place, its own table (embedded) or key prefix (etcd: the
    instances' prefix with `instances/` replaced by `policies/`, else `<prefix>.policies/`),
    records keyed (service, policy kind)."""
    if not spec or spec == "embedded":
        return EmbeddedStore(data_dir, table=kind)
    if spec.startswith("embedded:"):
        return EmbeddedStore(spec[len("embedded:") :], table=kind)
    u = urlparse(spec)
    if u.scheme == "etcd":
        if not u.hostname or not u.port:
            raise StoreError(f"--store {spec!r}: expected etcd://host:port")
        prefix = (
            (u.path.rstrip("/") + "/")
            if u.path and u.path != "/"
            else "/sofamesh/registry/instances/"
        )
        if kind != "instances":
            # a sibling of the instances' prefix, never under it (their watch would see it)
            if prefix.endswith("/instances/"):
                prefix = f"{prefix[: -len('instances/')]}{kind}/"
            else:
                prefix = f"{prefix.rstrip('/')}.{kind}/"
        return EtcdStore(u.hostname, u.port, prefix)
    raise StoreError(f"--store {spec!r}: expected 'embedded', 'embedded:DIR' or etcd://host:port")
