"""Access logs differentially: `alpair(access_log=[...], ...)` runs one bootstrap in Envoy
1.40 and in `sofamesh proxy`, each in front of its own ScriptedUpstream (see
tests/integration/http_filters/conftest.py), with each logger's `path` "{LOG0}", "{LOG1}", ...
made a file of that side's own; `Side.lines(i, n)` waits for and returns logger i's lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.http_filters.conftest import (
    ScriptedUpstream,
    Side,
    _distinct,
    bootstrap,
)
from tests.support.envoy import ProxyProcess

FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def file_log(i: int, log_format: dict | None = None, filt: dict | None = None, **extra) -> dict:
    """An AccessLog entry: envoy.access_loggers.file to "{LOGi}"."""
    cfg: dict[str, Any] = {"@type": FILE, "path": f"{{LOG{i}}}", **extra}
    if log_format is not None:
        cfg["log_format"] = log_format
    out: dict[str, Any] = {"name": "envoy.access_loggers.file", "typed_config": cfg}
    if filt is not None:
        out["filter"] = filt
    return out


class LogSide:
    def __init__(self, side: Side, logs: list[Path]) -> None:
        self.side = side
        self.logs = logs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.side, name)

    def lines(self, i: int, n: int, settle: float = 0.0) -> list[str]:
        """Logger i's lines once there are n (or after 15 s); `settle`: then wait that long
        more and read again (a filter's test that fewer come)."""
        deadline = time.monotonic() + 15  # both write their batches within about a second
        path = self.logs[i]
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            got = text.splitlines()
            if len(got) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if settle:
            time.sleep(settle)
            got = path.read_text(errors="replace").splitlines() if path.exists() else []
        return got


@pytest.fixture
def alpair(tmp_path: Path) -> Iterator[Callable[..., tuple[LogSide, LogSide]]]:
    started: list[Side] = []

    def start_one(kind: str, access_log: list, kw: dict) -> LogSide:
        up = ScriptedUpstream().start()
        n_logs = json.dumps(access_log).count("{LOG")
        for attempt in range(3):
            port, admin = _distinct(2, {up.port})
            work = tmp_path / f"{kind}-{len(started)}-{attempt}"
            work.mkdir(parents=True)
            logs = [work / f"access{i}.log" for i in range(n_logs)]
            text = json.dumps(access_log)
            for i, p in enumerate(logs):
                text = text.replace(f"{{LOG{i}}}", str(p))
            hcm_extra = {**kw.pop("hcm_extra", {}), "access_log": json.loads(text)}
            boot = bootstrap(port, admin, up.port, hcm_extra=hcm_extra, **kw)
            kw["hcm_extra"] = {k: v for k, v in hcm_extra.items() if k != "access_log"}
            if kind == "envoy":
                proc = ProxyProcess.envoy(envoy_binary(), boot, work)
            else:
                proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
            try:
                proc.start()
            except RuntimeError as e:
                proc.stop()
                if attempt < 2 and "in use" in str(e):
                    continue
                up.stop()
                raise
            side = Side(kind, port, admin, proc, up)
            started.append(side)
            return LogSide(side, logs)
        raise AssertionError("unreachable")

    def start(access_log: list, **kw: Any) -> tuple[LogSide, LogSide]:
        return start_one("envoy", access_log, dict(kw)), start_one("sofamesh", access_log, kw)

    yield start
    for s in started:
        s.proc.stop()
        s.upstream.stop()
