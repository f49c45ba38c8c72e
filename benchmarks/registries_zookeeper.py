"""ZooKeeper (Dubbo layout) adapter at scale, against a real ZooKeeper server.

    .venv/bin/python benchmarks/registries_zookeeper.py [--interfaces 10000 --per-interface 5]

Writes <interfaces> x <per-interface> provider nodes (Dubbo 2.7 URL-encoded names) into a
fresh ZooKeeper, then measures:
  * initial sync: the adapter's `start()` until its snapshot holds every instance (watches
    armed on the root and on every interface), wall time and process CPU time;
  * the same read done the plain way for comparison: kazoo's synchronous `get_children` over
    every providers node (no watches, no parsing) - the floor a ZooKeeper client pays;
  * the adapter process's RSS growth with the full model;
  * change latency: a provider node created (and deleted) by another ZooKeeper session ->
    the adapter's `on_change` with the new snapshot, p50/p99 over --changes samples.
Results print as a table and as JSON (--json FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kazoo.client import KazooClient

from sofamesh.pilot import registries
from tests.support.servers import ZooKeeperServer


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def node(iface: str, i: int) -> str:
    host = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    url = (
        f"dubbo://{host}:20880/{iface}?anyhost=true&application=bench-provider&deprecated=false"
        f"&dubbo=2.0.2&dynamic=true&generic=false&interface={iface}&methods=a,b,c&pid=1"
        f"&release=2.7.23&side=provider&timestamp=1700000000000&version=1.0.0"
    )
    return quote_plus(url, safe="*")


def populate(zk: KazooClient, root: str, n_if: int, per: int) -> float:
    t0 = time.perf_counter()
    zk.ensure_path(root)
    pending = []
    for k in range(n_if):
        iface = f"com.example.bench.Service{k:05d}"
        pending.append(zk.create_async(f"{root}/{iface}", b""))
        if len(pending) >= 2000:
            for p in pending:
                p.get()
            pending = []
    for p in pending:
        p.get()
    pending = []
    for k in range(n_if):
        iface = f"com.example.bench.Service{k:05d}"
        pending.append(zk.create_async(f"{root}/{iface}/providers", b""))
        for j in range(per):
            pending.append(
                zk.create_async(f"{root}/{iface}/providers/{node(iface, k * per + j)}", b"")
            )
        if len(pending) >= 2000:
            for p in pending:
                p.get()
            pending = []
    for p in pending:
        p.get()
    return time.perf_counter() - t0


def plain_read(hosts: str, root: str) -> tuple[float, int]:
    zk = KazooClient(hosts=hosts, timeout=30)
    zk.start(timeout=30)
    try:
        t0 = time.perf_counter()
        n = 0
        for iface in zk.get_children(root):
            n += len(zk.get_children(f"{root}/{iface}/providers"))
        return time.perf_counter() - t0, n
    finally:
        zk.stop()
        zk.close()


async def measure(hosts: str, root: str, total: int, changes: int, writer: KazooClient) -> dict:
    rss0 = rss_mb()
    cpu0 = time.process_time()
    events: asyncio.Queue[float] = asyncio.Queue()
    reg = registries.build(
        {"type": "zookeeper", "hosts": hosts, "root": root, "connect_timeout": 300}
    )
    t0 = time.perf_counter()
    await reg.start(lambda name: events.put_nowait(time.perf_counter()))
    sync_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    got = sum(len(v) for v in reg.snapshot().instances.values())
    assert got == total, (got, total)
    rss = rss_mb() - rss0
    while not events.empty():
        events.get_nowait()

    iface = "com.example.bench.Service00000"
    lat = []
    for i in range(changes):
        path = f"{root}/{iface}/providers/{node(iface, 10_000_000 + i)}"
        for op in ("create", "delete"):
            t = time.perf_counter()
            if op == "create":
                await asyncio.to_thread(writer.create, path, b"")
            else:
                await asyncio.to_thread(writer.delete, path)
            while True:
                at = await asyncio.wait_for(events.get(), 10)
                n = len(reg.snapshot().instances[iface])
                want = 6 if op == "create" else 5
                if n == want:
                    lat.append((at - t) * 1000)
                    break
    await reg.stop()
    lat.sort()
    return {
        "initial_sync_s": round(sync_s, 2),
        "initial_sync_cpu_s": round(cpu_s, 2),
        "rss_growth_mb": round(rss, 1),
        "change_p50_ms": round(statistics.median(lat), 2),
        "change_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
        "changes": len(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interfaces", type=int, default=10_000)
    ap.add_argument("--per-interface", type=int, default=5)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import uvloop

    root = "/dubbo"
    total = args.interfaces * args.per_interface
    with ZooKeeperServer(tick_ms=2000) as server:
        writer = KazooClient(hosts=server.hosts, timeout=30)
        writer.start(timeout=30)
        try:
            write_s = populate(writer, root, args.interfaces, args.per_interface)
            plain_s, n = plain_read(server.hosts, root)
            assert n == total, (n, total)
            res = uvloop.run(measure(server.hosts, root, total, args.changes, writer))
        finally:
            writer.stop()
            writer.close()
    res = {
        "interfaces": args.interfaces,
        "instances": total,
        "zookeeper_populate_s": round(write_s, 2),
        "plain_kazoo_read_s": round(plain_s, 2),
        **res,
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
