"""Run h2load (nghttp2's HTTP/2 load generator) pinned to a core and parse its report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import proc

_TIME = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable h2load time {text!r}")
    return float(m.group(1)) * _TIME[m.group(2)]


@dataclass
class H2loadResult:
    requests: int  # succeeded (2xx or 3xx, h2load's "succeeded") in the measured duration
    done: int
    failed: int
    errored: int
    timeout: int
    seconds: float
    rps: float
    status_2xx: int
    status_other: int  # 3xx + 4xx + 5xx
    mean_ms: float
    max_ms: float
    protocol: str
    raw: str


def parse(out: str) -> H2loadResult:
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", out)
    if not m:
        raise ValueError(f"h2load output without a summary:\n{out[-3000:]}")
    seconds = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    p = re.search(r"Application protocol: (\S+)", out)
    if not (r and s and t):
        raise ValueError(f"h2load output without request counts:\n{out[-3000:]}")
    return H2loadResult(
        requests=int(r.group(4)),
        done=int(r.group(3)),
        failed=int(r.group(5)),
        errored=int(r.group(6)),
        timeout=int(r.group(7)),
        seconds=seconds,
        rps=float(m.group(3)),
        status_2xx=int(s.group(1)),
        status_other=int(s.group(2)) + int(s.group(3)) + int(s.group(4)),
        mean_ms=_ms(t.group(3)),
        max_ms=_ms(t.group(2)),
        protocol=p.group(1) if p else "?",
        raw=out,
    )


def run(
    url: str,
    connections: int,
    streams: int,
    seconds: float,
    core: int | None,
    *,
    h1: bool = False,
    body: Path | None = None,
    headers: tuple[str, ...] = (),
) -> H2loadResult:
    """Closed-loop load for `seconds` (h2load -D): `connections` connections, each with
    `streams` concurrent streams (or, with h1, that many pipelined HTTP/1.1 requests);
    `body` makes every request a POST of that file's bytes."""
    argv = [
        "h2load",
        "-t",
        "1",
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-D",
        str(max(1, round(seconds))),
    ]
    if h1:
        argv.append("--h1")
    if body is not None:
        argv += ["-d", str(body)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(
        proc.pin(argv, core), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"h2load exited {out.returncode}: {out.stderr[-2000:]}{out.stdout[-2000:]}"
        )
    return parse(out.stdout)
