"""Memory of Envoy 1.40 and sofamesh side by side: RSS per idle and per busy HTTP/1.1 connection, and a soak.

    .venv/bin/python benchmarks/memory.py                      # both parts, 10-minute soak (~17 min)
    .venv/bin/python benchmarks/memory.py --parts per-conn     # ~5 minutes
    .venv/bin/python benchmarks/memory.py --parts soak --soak 600
    .venv/bin/python benchmarks/memory.py --quick              # smoke run: 1k idle, 100 busy, 60 s soak

Both proxies get the bootstrap of http1_e2e.py (lib/bootstrap.py: one HTTP/1.1 listener on
a free 127.0.0.1 port, local_ratelimit + router, one STATIC cluster to the nginx upstream of
lib/nginx.py), `--concurrency 1`, pinned to core 0; nginx, wrk and this script's clients run
on core 1. This script raises its RLIMIT_NOFILE soft limit to the hard limit first; nginx and
the proxies inherit it. RSS is VmRSS summed over the proxy's process tree (/proc/<pid>/status);
fds are the entries of /proc/<pid>/fd over the tree, sorted into downstream sockets (local
port = the listener), upstream sockets (remote port = nginx) and the rest.

Per connection (each proxy started fresh for each part, the two interleaved):
  * idle: RSS at rest (after a few requests), then with --idle keep-alive connections open
    (opened --in-flight at a time from an asyncio client in this process, each having made one
    GET and read the response), in four steps (RSS after each: the slope is a second
    estimate); then every connection makes a second request (all must succeed: they were
    real, live keep-alive connections), then all close; then as many open again and close
    (RSS with them: what the allocator kept after the first close should be reused, not
    added to). At rest and after each close the fds other than the upstream pool's are compared.
    KB per idle connection = (RSS with N open - RSS at rest) / N.
  * busy: RSS at rest, then during `wrk -t1 -c --busy` (closed loop, keep-alive, full speed)
    for --busy-seconds: the median of 1 s samples after the first 5 s.
    KB per busy connection = (that median - RSS at rest) / connections.
Soak: both proxies at once, each under its own `wrk -t1 -c --soak-connections` paced by a wrk
Lua delay() (--soak-pace-ms between a connection's requests) and, so connections also come and
go, a second wrk of --soak-churn-connections whose every request says `Connection: close`
(--soak-churn-pace-ms apart: each request a new connection); --soak-warmup seconds of load
then --soak seconds sampled every --interval s (RSS and fds of each tree), then the load stops
and two more samples follow. Growth = mean RSS of the last minute - mean of the first minute
after the warm-up; also the least-squares slope. fd leak check: after the load stops, no
downstream socket is left and the fds other than the upstream pool's idle keep-alive
connections are as many as at rest before the load.
Writes the samples to --csv and the plot to --svg (lib/svgplot.py); prints a summary and the
JSON; exits 1 if a proxy failed, a request failed, or a check did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http1_e2e import proxy_argv
from lib import nginx, wrk
from lib.bootstrap import BENCH_HOST, bootstrap
from lib.proc import Proc, free_port, http_get, pin, process_tree
from lib.svgplot import Panel, svg_chart

KINDS = ("envoy", "sofamesh")
REQUEST = f"GET / HTTP/1.1\r\nHost: {BENCH_HOST}\r\n\r\n".encode()
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


# ---- /proc ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of pid's process tree, in KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _socket_ports() -> dict[int, tuple[int, int]]:
    """socket inode -> (local port, remote port) of every IPv4 TCP socket (/proc/net/tcp)."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16))
    return out


def fds(pid: int, listen_port: int, upstream_port: int) -> dict[str, int]:
    """Open fds of pid's tree: total, downstream (accepted from the listener), upstream (to
    nginx), the rest (listening sockets, epoll, eventfds, pipes, logs...)."""
    ports = _socket_ports()
    n = down = up = 0
    for p in process_tree(pid):
        try:
            entries = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for e in entries:
            try:
                target = os.readlink(f"/proc/{p}/fd/{e}")
            except OSError:
                continue
            n += 1
            if target.startswith("socket:["):
                local, remote = ports.get(int(target[8:-1]), (0, 0))
                if local == listen_port and remote:
                    down += 1
                elif remote == upstream_port:
                    up += 1
    return {"total": n, "downstream": down, "upstream": up, "other": n - down - up}


def settled_rss(pid: int, wait: float = 2.0, samples: int = 3) -> int:
    """Median of a few RSS samples half a second apart, after `wait` seconds."""
    time.sleep(wait)
    vals = []
    for _ in range(samples):
        vals.append(rss_kb(pid))
        time.sleep(0.5)
    return int(statistics.median(vals))


# ---- the idle keep-alive client ---------------------------------------------------------------


async def _request(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    """One GET on a keep-alive connection; True when a whole 200 response came back."""
    await loop.sock_sendall(sock, REQUEST)
    buf = b""
    while True:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            return False
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            continue
        if not buf.startswith(b"HTTP/1.1 200"):
            return False
        m = _CONTENT_LENGTH.search(buf, 0, end + 2)
        if m is None:  # both proxies forward nginx's Content-Length
            return False
        if len(buf) >= end + 4 + int(m.group(1)):
            return True


async def _open_one(port: int, timeout: float) -> socket.socket | None:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), timeout)
        if await asyncio.wait_for(_request(loop, s), timeout):
            return s
    except (TimeoutError, OSError):
        pass
    s.close()
    return None


async def _open_many(port: int, n: int, in_flight: int, timeout: float) -> list:
    sem = asyncio.Semaphore(in_flight)

    async def one() -> socket.socket | None:
        async with sem:
            return await _open_one(port, timeout)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _recheck(socks: list[socket.socket], in_flight: int, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)

    async def one(s: socket.socket) -> bool:
        async with sem:
            try:
                return await asyncio.wait_for(_request(loop, s), timeout)
            except (TimeoutError, OSError):
                return False

    return sum(await asyncio.gather(*(one(s) for s in socks)))


def open_idle(port: int, n: int, in_flight: int, timeout: float = 10.0) -> list[socket.socket]:
    """n keep-alive connections to port, each after one complete GET; the failed ones dropped."""
    return [s for s in asyncio.run(_open_many(port, n, in_flight, timeout)) if s is not None]


def recheck(socks: list[socket.socket], in_flight: int, timeout: float = 10.0) -> int:
    """A second GET on every connection: how many got a whole 200 response."""
    return asyncio.run(_recheck(socks, in_flight, timeout))


# ---- proxies ----------------------------------------------------------------------------------


class Proxy:
    """A fresh Envoy or sofamesh with the benchmark bootstrap, checked to proxy to nginx."""

    def __init__(self, kind: str, workdir: Path, upstream_port: int, core: int, tag: str):
        self.kind, self.upstream_port = kind, upstream_port
        self.port, self.admin = free_port(), free_port()
        config = workdir / f"{kind}-{tag}.json"
        config.write_text(json.dumps(bootstrap(self.port, self.admin, upstream_port), indent=1))
        self.proc = Proc(kind, proxy_argv(kind, config), workdir / f"{kind}-{tag}.log", core)

    def start(self) -> Proxy:
        self.proc.start()
        try:
            self.proc.wait_ready(
                lambda: http_get(self.admin, "/ready")[0] == 200 and http_get(self.port)[0] == 200
            )
            # a few requests, each on its own connection: the keep-alive path has run
            for _ in range(20):
                status, body = http_get(self.port)
                if status != 200 or body != nginx.BODY.encode():
                    raise RuntimeError(f"{self.kind} answered {status} {body[:200]!r}")
        except Exception:
            self.proc.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.p is not None and self.proc.p.poll() is None

    def fds(self) -> dict[str, int]:
        return fds(self.pid, self.port, self.upstream_port)

    def stop(self) -> None:
        self.proc.stop()


def wrk_argv(
    url: str, connections: int, seconds: int, core: int, lua: Path | None, close: bool = False
) -> list[str]:
    """wrk, one thread; with close, every request says `Connection: close` (a new connection
    per request: wrk reconnects)."""
    script = ["-s", str(lua)] if lua else []
    script += ["-H", "Connection: close"] if close else []
    argv = ["wrk", "--latency", "-t", "1", "-c", str(connections), *script]
    return pin([*argv, "-d", f"{seconds}s", "-H", f"Host: {BENCH_HOST}", url], core)


def _wrk_result(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode:
        return {"error": f"wrk exited {p.returncode}: {err[-500:]}"}
    r = wrk.parse(out)
    row = {"requests": r.requests, "rps": round(r.rps, 1), "p99_ms": r.p99_ms}
    if r.non_2xx or r.socket_errors:
        row["error"] = f"{r.non_2xx} non-2xx responses, {r.socket_errors} socket errors"
    return row


# ---- per connection ---------------------------------------------------------------------------


def measure_idle(px: Proxy, n: int, in_flight: int) -> dict:
    rest = settled_rss(px.pid)
    row: dict = {"rest_kb": rest, "rest_fds": px.fds(), "steps": []}
    socks: list[socket.socket] = []
    try:
        for i in range(4):
            want = n * (i + 1) // 4 - len(socks)
            socks += open_idle(px.port, want, in_flight)
            row["steps"].append({"open": len(socks), "rss_kb": settled_rss(px.pid)})
        row["opened"] = len(socks)
        row["idle_kb"] = row["steps"][-1]["rss_kb"]
        row["idle_fds"] = px.fds()
        row["second_request_ok"] = recheck(socks, in_flight)
        row["after_second_request_kb"] = settled_rss(px.pid)
    finally:
        for s in socks:
            s.close()
    row["after_close_kb"] = settled_rss(px.pid, wait=3.0)
    row["after_close_fds"] = px.fds()
    # The same number again: memory kept after the close should be reused, not added to.
    socks = open_idle(px.port, n, in_flight)
    try:
        row["reopened"] = len(socks)
        row["reopened_kb"] = settled_rss(px.pid)
    finally:
        for s in socks:
            s.close()
    row["after_second_close_kb"] = settled_rss(px.pid, wait=3.0)
    row["after_second_close_fds"] = px.fds()
    row["kb_per_idle_conn"] = round((row["idle_kb"] - rest) / max(row["opened"], 1), 2)
    xs = [0] + [s["open"] for s in row["steps"]]
    ys = [rest] + [s["rss_kb"] for s in row["steps"]]
    row["kb_per_idle_conn_slope"] = round(statistics.linear_regression(xs, ys).slope, 2)
    errors = []
    if row["opened"] < n:
        errors.append(f"only {row['opened']} of {n} connections made their first request")
    if row["reopened"] < n:
        errors.append(f"only {row['reopened']} of {n} connections reopened")
    for key in ("after_close_fds", "after_second_close_fds"):
        if row[key]["downstream"] or row[key]["other"] != row["rest_fds"]["other"]:
            errors.append(f"fds at rest {row['rest_fds']}, after closing {row[key]}")
    if row["second_request_ok"] < row["opened"]:
        errors.append(f"second request ok on {row['second_request_ok']} of {row['opened']}")
    if not px.alive():
        errors.append(f"{px.kind} died")
    if errors:
        row["error"] = "; ".join(errors)
    return row


def measure_busy(px: Proxy, n: int, seconds: int, core: int) -> dict:
    rest = settled_rss(px.pid)
    p = subprocess.Popen(
        wrk_argv(f"http://127.0.0.1:{px.port}/", n, seconds, core, None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples, fd_rows = [], []
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < seconds - 1:
        time.sleep(1.0)
        if time.monotonic() - t0 >= 5:
            samples.append(rss_kb(px.pid))
            if len(fd_rows) < 3:
                fd_rows.append(px.fds())
    row: dict = {"rest_kb": rest, **_wrk_result(p, seconds + 60)}
    row["busy_kb"] = int(statistics.median(samples)) if samples else None
    row["busy_max_kb"] = max(samples) if samples else None
    row["busy_fds"] = fd_rows[-1] if fd_rows else None
    if row["busy_kb"] is not None:
        row["kb_per_busy_conn"] = round((row["busy_kb"] - rest) / n, 2)
    if not px.alive():
        row["error"] = f"{px.kind} died"
    return row


def per_connection(args, workdir: Path, up_port: int) -> dict:
    out: dict = {k: {} for k in KINDS}
    for part in ("idle", "busy"):
        for kind in KINDS if part == "idle" else KINDS[::-1]:
            px = Proxy(kind, workdir, up_port, args.proxy_core, part)
            try:
                px.start()
                if part == "idle":
                    out[kind]["idle"] = measure_idle(px, args.idle, args.in_flight)
                else:
                    out[kind]["busy"] = measure_busy(
                        px, args.busy, args.busy_seconds, args.load_core
                    )
            except Exception as e:  # noqa: BLE001 - reported in the table and exit status
                out[kind][part] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            finally:
                px.stop()
            print(f"{kind} {part}: {json.dumps(out[kind][part])}", flush=True)
    s, e = out["sofamesh"], out["envoy"]
    ratio = {}
    for part, key in (("idle", "kb_per_idle_conn"), ("busy", "kb_per_busy_conn")):
        if s.get(part, {}).get(key) and e.get(part, {}).get(key):
            ratio[key] = round(s[part][key] / e[part][key], 3)
    out["ratio_sofamesh_over_envoy"] = ratio
    return out


def per_connection_table(res: dict, idle: int, busy: int) -> str:
    cols = (
        ("rest MB", "idle", "rest_kb", 1024),
        (f"{idle} idle MB", "idle", "idle_kb", 1024),
        ("KB/idle conn", "idle", "kb_per_idle_conn", 1),
        ("KB/idle (slope)", "idle", "kb_per_idle_conn_slope", 1),
        ("closed MB", "idle", "after_close_kb", 1024),
        (f"{idle} again MB", "idle", "reopened_kb", 1024),
        ("rest MB", "busy", "rest_kb", 1024),
        (f"{busy} busy MB", "busy", "busy_kb", 1024),
        ("KB/busy conn", "busy", "kb_per_busy_conn", 1),
        ("busy rps", "busy", "rps", 1),
    )
    head = f"{'proxy':<18}" + "".join(f"{c[0]:>17}" for c in cols)
    lines = [head, "-" * len(head)]
    for kind in KINDS:
        cells = []
        for _, part, key, div in cols:
            v = res[kind].get(part, {}).get(key)
            cells.append("-" if v is None else str(round(v / div, 2)))
        lines.append(f"{kind:<18}" + "".join(f"{c:>17}" for c in cells))
        for part in ("idle", "busy"):
            if res[kind].get(part, {}).get("error"):
                lines.append(f"{'':<18}ERROR ({part}) {res[kind][part]['error']}")
    r = res.get("ratio_sofamesh_over_envoy", {})
    lines.append(
        f"sofamesh / envoy: per idle connection {r.get('kb_per_idle_conn')}, "
        f"per busy connection {r.get('kb_per_busy_conn')}"
    )
    return "\n".join(lines)


# ---- soak -------------------------------------------------------------------------------------


def soak(args, workdir: Path, up_port: int) -> dict:
    pxs = {k: Proxy(k, workdir, up_port, args.proxy_core, "soak") for k in KINDS}
    out: dict = {"samples": []}
    wrks: dict[str, subprocess.Popen] = {}
    try:
        for px in pxs.values():
            px.start()
        for kind, px in pxs.items():
            out[kind] = {"rest_kb": settled_rss(px.pid), "rest_fds": px.fds()}
        # wrk runs past the last sample, so every "load" sample is taken under load
        total = int(args.soak_warmup + args.soak + 2 * args.interval)
        loads = [("wrk", args.soak_connections, args.soak_pace_ms, False)]
        if args.soak_churn_pace_ms > 0:
            loads.append(("churn", args.soak_churn_connections, args.soak_churn_pace_ms, True))
        for name, conns, pace, close in loads:
            lua = workdir / f"pace-{pace}.lua"
            lua.write_text(f"function delay()\n  return {int(pace)}\nend\n")
            for k, px in pxs.items():
                url = f"http://127.0.0.1:{px.port}/"
                wrks[f"{k} {name}"] = subprocess.Popen(
                    wrk_argv(url, conns, total, args.load_core, lua, close),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
        t0 = time.monotonic() + args.soak_warmup  # t = 0: the end of the warm-up
        t_end = t0 + args.soak

        def sample(phase: str) -> None:
            row: dict = {"t_s": round(time.monotonic() - t0, 1), "phase": phase}
            for k, px in pxs.items():
                row[f"{k}_rss_mb"] = round(rss_kb(px.pid) / 1024, 2)
                f = px.fds()
                row[f"{k}_fds"] = f["total"]
                row[f"{k}_downstream"] = f["downstream"]
                row[f"{k}_upstream"] = f["upstream"]
            out["samples"].append(row)
            if row["t_s"] % 60 < args.interval / 2 or phase == "after":
                print(json.dumps(row), flush=True)

        nxt = time.monotonic()
        while nxt + args.interval <= t_end + 0.5:
            nxt += args.interval
            time.sleep(max(0.0, nxt - time.monotonic()))
            sample("warmup" if time.monotonic() < t0 - 0.5 else "load")
        for name, p in wrks.items():
            kind, load = name.split()
            out[kind][load] = _wrk_result(p, 120)
        for _ in range(2):
            time.sleep(args.interval)
            sample("after")
        for kind, px in pxs.items():
            out[kind]["after_kb"] = rss_kb(px.pid)
            out[kind]["after_fds"] = px.fds()
            out[kind]["alive"] = px.alive()
    finally:
        for p in wrks.values():
            if p.poll() is None:
                p.kill()
        for px in pxs.values():
            px.stop()
    for kind in KINDS:
        out[kind].update(soak_summary(out["samples"], kind, args.soak))
    return out


def soak_summary(samples: list[dict], kind: str, soak_s: float) -> dict:
    load = [(r["t_s"], r[f"{kind}_rss_mb"]) for r in samples if r["phase"] == "load"]
    if len(load) < 4:
        return {"error": "too few samples"}
    win = min(60.0, soak_s / 4)
    first = [y for t, y in load if t < win]
    last = [y for t, y in load if t >= soak_s - win]
    fit = statistics.linear_regression([t for t, _ in load], [y for _, y in load])
    fd_load = [r[f"{kind}_fds"] for r in samples if r["phase"] == "load"]
    return {
        "window_s": win,
        "first_window_mean_mb": round(statistics.mean(first), 2),
        "last_window_mean_mb": round(statistics.mean(last), 2),
        "growth_mb": round(statistics.mean(last) - statistics.mean(first), 2),
        "slope_mb_per_hour": round(fit.slope * 3600, 2),
        "min_mb": min(y for _, y in load),
        "max_mb": max(y for _, y in load),
        "stdev_mb": round(statistics.pstdev(y for _, y in load), 3),
        "fds_under_load_min_max": [min(fd_load), max(fd_load)],
    }


def soak_checks(res: dict) -> list[str]:
    errors = []
    for kind in KINDS:
        r = res[kind]
        for load in ("wrk", "churn"):
            if r.get(load, {}).get("error"):
                errors.append(f"{kind} {load}: {r[load]['error']}")
        if not r.get("alive", False):
            errors.append(f"{kind} died during the soak")
        after, rest = r.get("after_fds"), r.get("rest_fds")
        if after and rest:
            if after["downstream"]:
                errors.append(f"{kind}: {after['downstream']} downstream fds left after the load")
            if after["total"] - after["upstream"] != rest["total"] - rest["upstream"]:
                errors.append(f"{kind}: fds other than the upstream pool {rest} -> {after}")
    return errors


def soak_table(res: dict) -> str:
    head = (
        f"{'proxy':<10}{'rest MB':>9}{'1st min MB':>12}{'last min MB':>12}{'growth MB':>11}"
        f"{'MB/hour':>9}{'stdev MB':>10}{'requests':>11}{'new conns':>11}{'fds rest':>10}"
        f"{'fds load':>11}"
        f"{'fds after':>11}"
    )
    lines = [head, "-" * len(head)]
    for kind in KINDS:
        r = res[kind]
        if "growth_mb" not in r:
            lines.append(f"{kind:<10}ERROR {r.get('error')}")
            continue
        lo, hi = r["fds_under_load_min_max"]
        fa, fr = r["after_fds"], r["rest_fds"]
        lines.append(
            f"{kind:<10}{r['rest_kb'] / 1024:>9.1f}{r['first_window_mean_mb']:>12}"
            f"{r['last_window_mean_mb']:>12}{r['growth_mb']:>11}{r['slope_mb_per_hour']:>9}"
            f"{r['stdev_mb']:>10}{r['wrk'].get('requests', '-')!s:>11}"
            f"{r.get('churn', {}).get('requests', '-')!s:>11}"
            f"{fr['total']:>10}{f'{lo}..{hi}':>11}"
            f"{fa['total']:>11}"
        )
        lines.append(
            f"{'':<10}fds after the load: {fa['upstream']} upstream keep-alive (pool), "
            f"{fa['downstream']} downstream, {fa['other']} other (at rest: {fr['other']} other)"
        )
    return "\n".join(lines)


def write_csv(path: Path, samples: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)


def soak_svg(res: dict, notes: list[str], soak_s: float) -> str:
    names = {"sofamesh": "sofamesh", "envoy": "Envoy 1.40"}
    rows = res["samples"]
    rss = {names[k]: [(r["t_s"], r[f"{k}_rss_mb"]) for r in rows] for k in KINDS[::-1]}
    delta = {
        names[k]: [
            (r["t_s"], round(r[f"{k}_rss_mb"] - res[k]["first_window_mean_mb"], 3)) for r in rows
        ]
        for k in KINDS[::-1]
        if "first_window_mean_mb" in res[k]
    }
    fdser = {names[k]: [(r["t_s"], r[f"{k}_fds"]) for r in rows] for k in KINDS[::-1]}
    marks = [(0.0, "warm-up ends"), (soak_s, "load stops")]
    return svg_chart(
        [
            Panel("RSS of each proxy's process tree", "RSS (MB)", rss, True, notes, marks),
            Panel(
                "RSS minus its mean over the first minute after the warm-up",
                "RSS change (MB)",
                delta,
                False,
                markers=marks,
            ),
            Panel("Open file descriptors (process tree)", "fds", fdser, True, markers=marks),
        ],
        "seconds since the end of the warm-up",
    )


def write_plot(args, sk: dict, when: str) -> None:
    """The soak's samples to --csv, its chart to --svg."""
    write_csv(args.csv, sk["samples"])
    churn = ""
    if args.soak_churn_pace_ms > 0:
        churn = (
            f"; and {args.soak_churn_connections} wrk connection sending "
            f"`Connection: close` every {args.soak_churn_pace_ms} ms"
        )
    run = f"{when}, --concurrency 1, both proxies at once; sampled every {args.interval:g} s"
    load = (
        f"load per proxy: wrk -c {args.soak_connections} keep-alive, "
        f"{args.soak_pace_ms} ms between a connection's requests{churn}"
    )
    args.svg.write_text(soak_svg(sk, [run, load], args.soak))


# ---- main -------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="per-conn,soak", help="per-conn, soak or both")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1k idle, 100 busy, 60 s soak")
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections")
    ap.add_argument("--in-flight", type=int, default=100, help="idle connections opening at once")
    ap.add_argument("--busy", type=int, default=1000, help="wrk connections for the busy part")
    ap.add_argument("--busy-seconds", type=int, default=20)
    ap.add_argument("--soak", type=float, default=600.0, help="soak seconds after the warm-up")
    ap.add_argument("--soak-warmup", type=float, default=30.0)
    ap.add_argument("--soak-connections", type=int, default=50)
    ap.add_argument("--soak-pace-ms", type=int, default=10, help="wrk delay between requests")
    ap.add_argument(
        "--soak-churn-connections",
        type=int,
        default=1,
        help="beside the keep-alive load, wrk connections sending `Connection: close`",
    )
    ap.add_argument(
        "--soak-churn-pace-ms",
        type=int,
        default=10,
        help="delay between their requests (each one a new connection); 0: no churn",
    )
    ap.add_argument("--interval", type=float, default=5.0, help="soak sampling period, seconds")
    ap.add_argument("--proxy-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1, help="core for nginx, wrk and the client")
    ap.add_argument("--csv", type=Path, default=HERE / "memory_soak.csv")
    ap.add_argument("--svg", type=Path, default=HERE / "memory_soak.svg")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--sofamesh-src",
        type=Path,
        help="run sofamesh from this src/ directory (PYTHONPATH; e.g. a built snapshot of a "
        "commit) instead of the installed one",
    )
    ap.add_argument(
        "--plot-only",
        type=Path,
        help="run nothing: redraw --csv and --svg from the soak of this --json file",
    )
    args = ap.parse_args(argv)
    if args.plot_only:
        saved = json.loads(args.plot_only.read_text())
        for key in ("soak", "soak_warmup", "soak_connections", "soak_pace_ms", "interval"):
            setattr(args, key, saved["layout"][key])
        for key in ("soak_churn_connections", "soak_churn_pace_ms"):
            setattr(args, key, saved["layout"].get(key, 0))
        write_plot(args, saved["soak"], saved["when"])
        print(soak_table(saved["soak"]))
        return 0
    if args.sofamesh_src:  # nginx and Envoy ignore it
        os.environ["PYTHONPATH"] = str(args.sofamesh_src.resolve())
    if args.quick:
        args.idle, args.busy, args.busy_seconds = 1000, 100, 8
        args.soak, args.soak_warmup = 60.0, 10.0
    parts = {p.strip() for p in args.parts.split(",")}
    nofile = raise_nofile()
    if "per-conn" in parts and nofile < args.idle + args.in_flight + 1000:
        print(f"RLIMIT_NOFILE {nofile} is too low for {args.idle} idle connections")
        return 1
    os.sched_setaffinity(0, {args.load_core})  # the idle client shares nginx's core
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "rlimit_nofile": nofile,
        "layout": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sofamesh-mem-") as tmp:
        workdir = Path(tmp)
        up_port = free_port()
        upstream = nginx.start(workdir, up_port, args.load_core)
        try:
            if "per-conn" in parts:
                pc = results["per_connection"] = per_connection(args, workdir, up_port)
                print(per_connection_table(pc, args.idle, args.busy), flush=True)
                errors += [
                    f"{k} {part}: {pc[k][part]['error']}"
                    for k in KINDS
                    for part in ("idle", "busy")
                    if pc[k].get(part, {}).get("error")
                ]
            if "soak" in parts:
                sk = results["soak"] = soak(args, workdir, up_port)
                errors += soak_checks(sk)
                if sk["samples"]:
                    write_plot(args, sk, results["when"])
        finally:
            upstream.stop()
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    results["errors"] = errors
    shown = json.loads(json.dumps(results))
    shown.get("soak", {}).pop("samples", None)  # in --csv
    print(json.dumps(shown, indent=1))
    if "per_connection" in results:
        print(per_connection_table(results["per_connection"], args.idle, args.busy))
    if "soak" in results:
        print(soak_table(results["soak"]))
    for e in errors:
        print("ERROR", e)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
