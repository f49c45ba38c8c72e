"""Run wrk (keep-alive HTTP/1.1 load) pinned to a core and parse its --latency report."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import proc

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str


def parse(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not m:
        raise ValueError(f"wrk output without a request count:\n{out}")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=rps,
        p50_ms=_ms(lat["50"]),
        p99_ms=_ms(lat["99"]),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(x) for x in errs.groups()) if errs else 0,
        raw=out,
    )


def run(
    url: str,
    connections: int,
    seconds: float,
    core: int | None,
    host: str,
    threads: int = 1,
    pace_ms: int = 0,
    workdir: str | None = None,
) -> WrkResult:
    """Closed-loop keep-alive load; pace_ms > 0 makes each connection wait that long between
    requests (a wrk Lua delay()), so every target gets about the same request rate."""
    script = []
    if pace_ms > 0:
        path = Path(workdir or tempfile.gettempdir()) / f"wrk-pace-{pace_ms}.lua"
        path.write_text(f"function delay()\n  return {int(pace_ms)}\nend\n")
        script = ["-s", str(path)]
    argv = proc.pin(
        [
            "wrk",
            "--latency",
            "-t",
            str(threads),
            "-c",
            str(connections),
            *script,
            "-d",
            f"{max(1, round(seconds))}s",
            "-H",
            f"Host: {host}",
            url,
        ],
        core,
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse(out.stdout)
