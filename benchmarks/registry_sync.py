"""Registry sync latency: a registration in one pilot's cluster, visible in the other's.

    .venv/bin/python benchmarks/registry_sync.py [--n 50 --background 1000 --json FILE]

Two real `sofamesh pilot` processes (`--cluster west --peer <east>` and the converse,
embedded store, default 100 ms debounce) and a real Envoy 1.40 fed by east over ADS. Each of
`--n` rounds registers a new service on west's REST API and times, from just before the PUT:
  * east's `GET /v1/services` listing it (owner cluster "west");
  * the Envoy fed by east holding its endpoint (admin /clusters), i.e. a sidecar in the
    other cluster able to route to it;
and after a deregistration, the same two going. `--background` services registered on west
first make the catalog a realistic size (each round's change re-sends the whole catalog).
Both sides are polled every 5 ms, so figures are rounded up by up to 5 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import envoy_binary, free_port
from tests.integration.pilot.conftest import PilotProcess, ads_bootstrap, http
from tests.support.envoy import ProxyProcess, admin_get


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def until(pred, timeout: float = 10.0, step: float = 0.005) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not met")
        time.sleep(step)
    return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--background", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="registry-sync-"))
    east, west = PilotProcess(work / "east"), PilotProcess(work / "west")
    east.extra = ["--cluster", "east", "--peer", west.api]
    west.extra = ["--cluster", "west", "--peer", east.api]
    admin = free_port()
    envoy = ProxyProcess.envoy(
        envoy_binary(), ads_bootstrap(east.xds_port, admin, False), work / "envoy"
    )
    try:
        east.start()
        west.start()
        envoy.start()

        def reg(k: int) -> None:
            west.register(f"bg-{k}", "i1", address="10.8.0.1", port=8000 + k % 1000)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(reg, range(args.background)))
        until(
            lambda: len(http("GET", east.api + "/v1/services")[1]["services"]) >= args.background,
            60,
        )

        def listed(name: str) -> bool:
            out = http("GET", f"{east.api}/v1/services/{name}")
            return out[0] == 200 and out[1]["instances"][0].get("cluster") == "west"

        def in_envoy(name: str) -> bool:
            return f"outbound|80||{name}::127.0.0.1:" in admin_get(admin, "/clusters")[1]

        add_api, add_envoy, del_api, del_envoy = [], [], [], []
        for k in range(args.n):
            name = f"sync-{k}"
            t0 = time.perf_counter()
            west.register(name, "i1", address="127.0.0.1", port=20000 + k, service_port=80)
            add_api.append(until(lambda n=name: listed(n)) - t0)
            add_envoy.append(until(lambda n=name: in_envoy(n)) - t0)
            time.sleep(0.05)
            t0 = time.perf_counter()
            west.deregister(name, "i1")
            del_api.append(
                until(lambda n=name: http("GET", f"{east.api}/v1/services/{n}")[0] == 404) - t0
            )
            del_envoy.append(until(lambda n=name: not in_envoy(n)) - t0)
            time.sleep(0.05)
        rows = {
            "registration -> listed on the peer pilot": add_api,
            "registration -> in the peer's Envoy": add_envoy,
            "removal -> gone from the peer pilot": del_api,
            "removal -> gone from the peer's Envoy": del_envoy,
        }
        out = {}
        print(f"{args.n} rounds, {args.background} other services in the catalog")
        print(f"{'':45} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, xs in rows.items():
            ms = [x * 1000 for x in xs]
            out[label] = {
                "p50": pct(ms, 50),
                "p99": pct(ms, 99),
                "max": max(ms),
                "mean": statistics.mean(ms),
            }
            print(f"{label:45} {out[label]['p50']:8.0f} {out[label]['p99']:8.0f} {max(ms):8.0f}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        envoy.stop()
        west.stop()
        east.stop()


if __name__ == "__main__":
    main()
