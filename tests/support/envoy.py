"""Start a real Envoy (or sofamesh, which takes the same flags) from a bootstrap dict, and stop it.

    with ProxyProcess.envoy(bootstrap, workdir) as p:      # or ProxyProcess.sofamesh(...)
        ... p.pid, p.log_text() ...

The bootstrap is written as JSON to ``workdir``; readiness is the admin ``/ready`` answering
200 (so the bootstrap must carry an ``admin`` address) and every static listener accepting.
The process is killed at ``stop()`` whatever state it is in.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

_base_ids = itertools.count(os.getpid() % 10000 * 100)


def admin_port(bootstrap: dict) -> int:
    return int(bootstrap["admin"]["address"]["socket_address"]["port_value"])


def listener_ports(bootstrap: dict) -> list[int]:
    return [
        int(lst["address"]["socket_address"]["port_value"])
        for lst in bootstrap.get("static_resources", {}).get("listeners", [])
        if "address" in lst  # (an internal listener has none)
    ]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def admin_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


class ProxyProcess:
    """One proxy process started from a bootstrap dict with Envoy's command line."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        bootstrap: dict,
        workdir: Path,
        taskset: str | None = None,
        env: dict | None = None,
    ):
        self.name = name
        self.bootstrap = bootstrap
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}-bootstrap.json"
        self.log_path = self.workdir / f"{name}.log"
        self.config_path.write_text(json.dumps(bootstrap, indent=1))
        self.argv = [*argv, "-c", str(self.config_path)]
        if taskset is not None:
            self.argv = ["taskset", "-c", taskset, *self.argv]
        self.env = env
        self.proc: subprocess.Popen | None = None

    @classmethod
    def envoy(
        cls,
        binary: str,
        bootstrap: dict,
        workdir: Path,
        concurrency: int = 1,
        log_level: str = "warning",
        taskset: str | None = None,
    ) -> ProxyProcess:
        argv = [
            binary,
            "--concurrency",
            str(concurrency),
            "-l",
            log_level,
            "--base-id",
            str(next(_base_ids)),
            "--disable-hot-restart",
        ]
        return cls("envoy", argv, bootstrap, workdir, taskset)

    @classmethod
    def sofamesh(
        cls,
        command: list[str],
        bootstrap: dict,
        workdir: Path,
        concurrency: int = 1,
        log_level: str = "warning",
        taskset: str | None = None,
    ) -> ProxyProcess:
        argv = [*command, "proxy", "--concurrency", str(concurrency), "-l", log_level]
        return cls("sofamesh", argv, bootstrap, workdir, taskset)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        aport = admin_port(self.bootstrap)
        ports = listener_ports(self.bootstrap)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} at start-up "
                    f"({' '.join(self.argv)}):\n{self.log_text()}"
                )
            try:
                status, _ = admin_get(aport, "/ready", timeout=0.5)
            except OSError:
                status = 0
            if status == 200 and all(_accepts(p) for p in ports):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        # Whole process group (start_new_session): sofamesh --concurrency N forks workers,
        # which may outlive a parent that already died.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
