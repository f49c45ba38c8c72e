"""SOFARegistry adapter at scale: N dataIds x M publishers' data in the emulated session
server, synced into a real `sofamesh pilot`.

    .venv/bin/python benchmarks/sofaregistry_scale.py [--services 10000 --per-service 5]

Starts tests/support/sofa_session_server.py (its own process), publishes every dataId over
one Bolt connection with sofa_wire's PublisherRegister (one publisher per dataId holding
`per-service` SOFARPC provider URLs; the connection stays open, or the server would drop
them), then starts `sofamesh pilot --config` with a sofaregistry registry listing the
dataIds, and measures:
  * publish: every register answered by the emulator;
  * sync: pilot process start until its /metrics show every service and instance
    (connect, 10k SubscriberRegisters, 10k ReceivedData pushes, model, xDS generation);
  * the pilot's RSS (VmRSS of its process) with the full model;
  * out to sidecars: a sofamesh sidecar, then Envoy 1.40, fed by that pilot over Delta ADS
    (`--sidecars sofamesh,envoy`; "" for none): process start until its admin shows every
    service's cluster active, and its RSS then.
Prints one JSON line. Not a timed test: figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml

from sofamesh.pilot.registries.sofa_conn import BoltPeer
from sofamesh.pilot.registries.sofa_wire import PublisherRegister, RegisterResponse
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap, http
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.servers import free_ports


def data_id(k: int) -> str:
    return f"com.example.bench.Service{k:05d}:1.0"


def provider(k: int, i: int) -> str:
    host = f"10.{k // 256 % 256}.{k % 256}.{i + 1}"
    return (
        f"bolt://{host}:12200?startTime=1700000000000&pid=1&appName=bench&timeout=3000"
        f"&serialization=hessian2&weight=100&protocol=bolt&interface=com.example.bench."
        f"Service{k:05d}&version=1.0"
    )


async def publish(port: int, n: int, per: int) -> tuple[BoltPeer, float]:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_connection(BoltPeer, "127.0.0.1", port)
    t0 = time.perf_counter()
    futs = []
    for k in range(n):
        reg = PublisherRegister(
            data_id=data_id(k),
            regist_id=str(uuid.uuid4()),
            app_name="bench",
            timestamp=int(time.time() * 1000),
            data_list=[provider(k, i) for i in range(per)],
        )
        futs.append(peer.push(reg, timeout=120))
        if len(futs) % 1000 == 0:
            await asyncio.sleep(0)
    res = await asyncio.gather(*futs)
    assert all(isinstance(r, RegisterResponse) and r.success for r in res)
    return peer, time.perf_counter() - t0


def sidecar(kind: str, pilot: PilotProcess, n: int, workdir: Path) -> dict:
    """A sidecar of `kind` on the pilot's Delta ADS: seconds until all n services' clusters
    are active, and its RSS (its whole process tree for sofamesh's workers)."""
    from tests.conftest import envoy_binary, sofamesh_command

    (admin,) = free_ports(1)
    boot = ads_bootstrap(pilot.xds_port, admin, delta=True)
    if kind == "envoy":
        proc = ProxyProcess.envoy(envoy_binary(), boot, workdir)
    else:
        proc = ProxyProcess.sofamesh(sofamesh_command(), boot, workdir)
    t0 = time.perf_counter()
    proc.start(timeout=300)
    try:
        while True:
            _, text = admin_get(admin, "/stats?filter=cluster_manager.active_clusters", 30)
            m = re.search(r"cluster_manager.active_clusters: (\d+)", text)
            if m and int(m.group(1)) >= n:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"{kind} never had {n} clusters:\n{proc.log_text()}")
            time.sleep(0.1)
        took = time.perf_counter() - t0
        return {"ready_s": round(took, 2), "rss_mb": round(rss_tree_mb(proc.pid), 1)}
    finally:
        proc.stop()


def rss_tree_mb(pid: int) -> float:
    """VmRSS of pid and its descendants (sofamesh's workers are child processes)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(k) for k in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gauge(text: str, name: str) -> int:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return int(float(m.group(1))) if m else 0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--per-service", type=int, default=5)
    ap.add_argument("--sidecars", default="sofamesh,envoy")
    args = ap.parse_args()
    n, per = args.services, args.per_service

    emu = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.sofa_session_server",
        "127.0.0.1:0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert emu.stdout is not None
    line = (await emu.stdout.readline()).decode()
    port = int(line.rsplit(":", 1)[1])
    peer, t_pub = await publish(port, n, per)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "pilot.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "registries": [
                        {
                            "type": "sofaregistry",
                            "address": f"127.0.0.1:{port}",
                            "data_ids": [data_id(k) for k in range(n)],
                            "connect_timeout": 120,
                        }
                    ]
                }
            )
        )
        pilot = PilotProcess(Path(tmp), extra=["--config", str(cfg)])
        t0 = time.perf_counter()
        pilot.start(timeout=300)
        t_ready = time.perf_counter() - t0
        while True:
            _, text = await asyncio.to_thread(http, "GET", pilot.api + "/metrics", None, 30)
            assert isinstance(text, str)
            if gauge(text, "pilot_services") >= n and gauge(text, "pilot_instances") >= n * per:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"pilot never synced:\n{pilot.log_text()}")
            await asyncio.sleep(0.2)
        t_sync = time.perf_counter() - t0
        assert pilot.proc is not None
        rss = rss_mb(pilot.proc.pid)
        pushes = re.search(r'stat="pushes"} (\S+)', text)
        sidecars = {}
        for kind in [k for k in args.sidecars.split(",") if k]:
            sidecars[kind] = await asyncio.to_thread(sidecar, kind, pilot, n, Path(tmp))
        pilot.stop()
    peer.close()
    emu.kill()
    await emu.wait()
    print(
        json.dumps(
            {
                "services": n,
                "instances": n * per,
                "publish_s": round(t_pub, 2),
                "pilot_ready_s": round(t_ready, 2),
                "pilot_synced_s": round(t_sync, 2),
                "pilot_rss_mb": round(rss, 1),
                "pushes": int(float(pushes.group(1))) if pushes else None,
                "sidecars": sidecars,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
