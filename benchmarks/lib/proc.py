"""Processes for benchmarks: start pinned to a core, wait until ready, read CPU time, stop the group."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Scheduling niceness for every benchmark process (set once by the script's --nice); a negative
# value keeps other work on a shared machine from preempting the measured processes.
NICE = 0


def pin(argv: list[str], core: int | None) -> list[str]:
    """argv run on one core (taskset) at the benchmark's niceness."""
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    if core is not None:
        prefix += ["taskset", "-c", str(core)]
    return prefix + argv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_get(port: int, path: str = "/", host: str = "bench.local", timeout: float = 2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants (sofamesh --concurrency N forks workers)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


class Proc:
    """A child process in its own session (so the whole group is stopped), optionally pinned."""

    def __init__(self, name: str, argv: list[str], log: Path, core: int | None = None):
        self.name = name
        self.argv = pin(argv, core)
        self.log = log
        self.p: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log, "wb") as f:
            self.p = subprocess.Popen(
                self.argv,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def wait_ready(self, check, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.p.returncode}: "
                    f"{' '.join(self.argv)}\n{self.tail()}"
                )
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s\n{self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.p is None:
            return
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(timeout=5)
