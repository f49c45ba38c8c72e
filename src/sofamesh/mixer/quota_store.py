"""Global quota state in etcd, so that several `sofamesh mixer` processes share one limit.

Each mixer writes, per bucket, its own sidecars' demands, shares and totals to
`<prefix><bucket hash>/<mixer>` (JSON, on the mixer's lease), and watches the prefix for the
other mixers' keys, which it hands to `QuotaState.set_remote`. Every mixer then splits the
limit over all sidecars of the bucket the same way and assigns its own sidecars their part,
so the shares add up to the one limit whichever mixer a sidecar talks to.

Writes are coalesced (`flush_interval`): one put per changed bucket however many reports
arrived meanwhile. A mixer that dies stops refreshing its lease, and its sidecars leave the
split once the lease (the assignment TTL) runs out: as long as their last assignments may
still be in force. With etcd away the mixer keeps serving from what it last knew, counts
the failed writes (`errors`) and re-lists the prefix when etcd is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from sofamesh.mixer.quota import BucketKey, QuotaState

log = logging.getLogger("sofamesh.mixer")

DEFAULT_PREFIX = "/sofamesh/mixer/quota/"


class QuotaStoreError(Exception):
    """A --store value that does not parse, or a store that cannot be opened."""


def parse_store(spec: str) -> tuple[str, int, str]:
    """etcd://host:port[/prefix] -> (host, port, prefix ending in /)."""
    u = urlparse(spec)
    if u.scheme != "etcd" or not u.hostname:
        raise QuotaStoreError(f"--store {spec!r}: expected etcd://host:port[/prefix]")
    try:
        port = u.port
    except ValueError:
        port = None
    if not port:
        raise QuotaStoreError(f"--store {spec!r}: expected etcd://host:port[/prefix]")
    prefix = (u.path.rstrip("/") + "/") if u.path and u.path != "/" else DEFAULT_PREFIX
    return u.hostname, port, prefix


def bucket_token(key: BucketKey) -> str:
    domain, items = key
    text = json.dumps([domain, [list(kv) for kv in items]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_origin(grpc_port: int) -> str:
    return f"{socket.gethostname()}:{grpc_port}"


class EtcdQuotaStore:
    kind = "etcd"

    def __init__(
        self,
        spec: str,
        state: QuotaState,
        on_change: Callable[[], None],
        origin: str,
        flush_interval: float = 0.05,
        timeout: float = 3.0,
    ):
        self.spec = spec
        self.host, self.port, prefix = parse_store(spec)
        self.prefix = prefix.encode()
        self.state = state
        self.on_change = on_change  # remote records applied: push changed assignments
        self.origin = origin.replace("/", "_")
        self.ttl = max(2, math.ceil(state.ttl))
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.writes = 0
        self.errors = 0  # failed etcd writes, lease refreshes and watches
        self.relists = 0
        self._client: Any = None  # aetcd.Client once opened
        self._lease: int | None = None
        self._keys: dict[bytes, tuple[BucketKey, str]] = {}  # remote etcd key -> (bucket, mixer)
        self._dirty: set[BucketKey] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _key(self, bucket: BucketKey) -> bytes:
        return self.prefix + f"{bucket_token(bucket)}/{self.origin}".encode()

    async def open(self) -> None:
        import aetcd

        self._client = aetcd.Client(host=self.host, port=self.port, timeout=self.timeout)
        try:
            self._lease = (await self._client.lease(self.ttl)).id
            rev = await self._load()
        except Exception as e:
            await self._client.close()
            raise QuotaStoreError(f"cannot open store {self.spec}: {e or type(e).__name__}") from e
        self.state.origin = self.origin
        self.state.listener = self._changed
        self._tasks = [
            asyncio.ensure_future(self._watch_loop(rev)),
            asyncio.ensure_future(self._flush_loop()),
            asyncio.ensure_future(self._lease_loop()),
        ]

    async def close(self) -> None:
        self.state.listener = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                log.debug("ignored during shutdown: %r", e)
        if self._client is not None:
            if self._lease is not None:
                try:  # our sidecars leave the split now, not when the lease runs out
                    await self._client.revoke_lease(self._lease)
                except Exception as e:  # noqa: BLE001 - etcd away: the lease expires
                    log.debug("ignored during shutdown: %r", e)
            await self._client.close()

    def _changed(self, bucket: BucketKey) -> None:
        self._dirty.add(bucket)
        self._wake.set()

    # --- writing our sidecars ---

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_interval)  # coalesce the reports of an instant
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for bucket in sorted(dirty):
                try:
                    await self._write(bucket)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - etcd away: retry the bucket later
                    self.errors += 1
                    log.warning("etcd quota write failed (%s): retrying", e)
                    self._dirty |= dirty
                    self._wake.set()
                    await asyncio.sleep(1.0)
                    break

    async def _write(self, bucket: BucketKey) -> None:
        records = self.state.local_records(bucket)
        if records:
            domain, items = bucket
            value = {
                "domain": domain,
                "bucket": [list(kv) for kv in items],
                "mixer": self.origin,
                "clients": records,
            }
            data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
            await self._client.put(self._key(bucket), data, lease=self._lease)
        else:
            await self._client.delete(self._key(bucket))
        self.writes += 1

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                reply = await self._client.refresh_lease(self._lease)
                if reply is None or reply.TTL <= 0:
                    # lost (etcd restarted, or away past the TTL): a new lease, all rewritten
                    log.warning("etcd quota lease lost: writing our sidecars again")
                    self._lease = (await self._client.lease(self.ttl)).id
                    for bucket in self.state.buckets:
                        self._changed(bucket)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd away: try again next round
                self.errors += 1
                log.warning("etcd quota lease refresh failed (%s)", e)

    # --- reading the other mixers' ---

    def _apply(self, key: bytes, value: bytes | None) -> bool:
        """One key of the prefix changed; True when it was another mixer's."""
        if value is None:
            known = self._keys.pop(key, None)
            if known is None:
                return False
            self.state.set_remote(known[0], known[1], {})
            return True
        try:
            doc = json.loads(value)
            bucket: BucketKey = (
                str(doc["domain"]),
                tuple((str(k), str(v)) for k, v in doc["bucket"]),
            )
            origin = str(doc["mixer"])
            records = {str(c): dict(r) for c, r in doc["clients"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.errors += 1
            log.error("unreadable quota record %r in etcd (%s): ignored", key, e)
            return False
        if origin == self.origin:
            return False
        self._keys[key] = (bucket, origin)
        self.state.set_remote(bucket, origin, records)
        return True

    async def _load(self) -> int:
        rng = await self._client.get_prefix(self.prefix)
        seen = set()
        for kv in rng:
            seen.add(kv.key)
            self._apply(kv.key, kv.value)
        for key in [k for k in self._keys if k not in seen]:  # gone while we were not watching
            self._apply(key, None)
        self.on_change()
        return rng.header.revision

    async def _watch_loop(self, rev: int | None) -> None:
        while True:
            try:
                if rev is None:
                    rev = await self._load()
                watch = await self._client.watch_prefix(self.prefix, start_revision=rev + 1)
                async for ev in watch:
                    rev = max(rev, ev.kv.mod_revision)
                    value = ev.kv.value if ev.kind == "PUT" else None
                    if self._apply(ev.kv.key, value):
                        self.on_change()
                log.info("etcd quota watch ended at revision %s: re-listing", rev)
                self.relists += 1
                rev = None
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd away: re-list when it is back
                self.errors += 1
                self.relists += 1
                log.warning("etcd quota watch failed (%s): retrying", e)
                rev = None
                await asyncio.sleep(1.0)
