"""`sofamesh demo` as a user runs it (`make run`'s command): it starts a mesh (pilot, two
apps that register themselves, a sofamesh sidecar in front of each, fed by the pilot), the
commands it prints work as it says, and Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import sofamesh_command
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def sh(cmd: str) -> str:
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def test_demo_mesh_commands_and_ctrl_c(tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("the demo prints curl commands: curl is needed to follow them")
    demo = subprocess.Popen(
        [*sofamesh_command(), "demo", "--free-ports"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C to stop"):
                break
        text = "\n".join(lines)
        assert lines and lines[-1] == "Ctrl-C to stop", text
        tries = lines[lines.index("Try:") + 1 : -1]
        commands = [t.strip() for t in tries if not t.strip().startswith("#")]
        assert len(commands) == 5, commands
        call1, deregister, call2, admin, status = commands
        assert " proxy-status --pilot http://127.0.0.1:" in status
        assert "host: hello" in call1 and "DELETE" in deregister and "/clusters" in admin
        workdir = re.search(r"logs\s+(\S+)", text).group(1)
        assert os.path.isdir(workdir)
        procs = descendants(demo.pid)
        assert len(procs) >= 3, procs  # the pilot and two sidecars

        # 1. a call by name through sidecar 1 reaches both instances, by turns
        answers = sh(call1).splitlines()
        assert len(answers) == 4 and all(a.startswith("hello from hello-") for a in answers)
        assert {a.split()[2] for a in answers} == {"hello-1", "hello-2"}, answers

        # 2. deregistration: traffic moves to hello-1 (through either sidecar) within 2 s
        t0 = time.monotonic()
        sh(deregister)
        wait_until(
            lambda: all(a.split()[2] == "hello-1" for a in sh(call2).splitlines()),
            2.0,
            "calls only to hello-1",
        )
        assert time.monotonic() - t0 < 2.0
        assert {a.split()[2] for a in sh(call1).splitlines()} == {"hello-1"}

        # 3. the admin page shows the cluster the pilot gave the sidecar, one host left
        hosts = {
            ln.split("::")[1]
            for ln in sh(admin).splitlines()
            if ln.startswith("outbound|80||hello::127.0.0.1:")
        }
        assert len(hosts) == 1, hosts

        # 4. proxy-status: both sidecars, clusters / endpoints / routes ACKed (no LDS asked)
        rows = {ln.split()[0]: ln.split() for ln in sh(status).splitlines()[1:]}
        assert set(rows) == {"hello-1.demo", "hello-2.demo"}, rows
        for r in rows.values():
            assert r[2:7] == ["SYNCED", "NOT", "SENT", "SYNCED", "SYNCED"], r

        # 5. Ctrl-C: everything stops, nothing is left, the temporary directory is gone
        demo.send_signal(signal.SIGINT)
        assert demo.wait(20) == 0
        rest = demo.stdout.read()
        assert "stopping" in rest, rest
        assert [p for p in procs if alive(p)] == []
        assert not os.path.exists(workdir)
    finally:
        if demo.poll() is None:
            for p in descendants(demo.pid):
                os.kill(p, signal.SIGKILL)
            demo.kill()
            demo.wait()
