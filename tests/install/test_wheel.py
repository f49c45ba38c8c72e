"""sofamesh as users install it: a wheel built from the sdist (`python -m build`, as a
package index would get it), installed into a fresh venv outside the source tree, its
package made read-only, and every command run from an empty folder with nothing beside it.

This is what `make test` (and so CI) proves about installation: the rest of the suite runs
from the editable checkout, which cannot see a file the wheel forgot or a path that only
resolves inside the source tree.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.integration.rpc.conftest import (
    SERVICE,
    NodeServer,
    auto_filter,
    bolt_filter,
    cluster,
    dubbo_filter,
    hcm,
    listener,
    node_client,
    route_config,
)
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

BUILD_TIMEOUT_S = 900  # compiles every extension on a 2-core machine

# The first test also waits for the module fixture's wheel build (pytest-timeout counts the
# setup): the suite's 300 s default is too short for that on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 300)]


class Installed:
    """A venv holding only the wheel and its runtime dependencies, and an empty cwd.

    The installed package is read-only for every command run through `sofamesh`: for root
    (CI), which ignores mode bits, each command runs in its own mount namespace where the
    package directory is bind-mounted read-only; otherwise the directory loses its write bits.
    """

    def __init__(self, venv: Path, cwd: Path, pkg: Path):
        self.venv = venv
        self.cwd = cwd
        self.pkg = pkg
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"

    @property
    def sofamesh(self) -> list[str]:
        exe = str(self.venv / "bin" / "sofamesh")
        if os.geteuid() != 0:
            return [exe]
        pkg = str(self.pkg)
        script = f'mount --bind {pkg} {pkg} && mount -o remount,ro,bind {pkg} && exec "$@"'
        return ["unshare", "--mount", "--", "sh", "-c", script, "sh", exe]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.sofamesh, *argv],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pip(self, *argv: str) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), "-m", "pip", *argv],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        return out.stdout


def _tree(path: Path, mode_change) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(mode_change(p.stat().st_mode))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    work = tmp_path_factory.mktemp("install")
    dist = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    wheels = list(dist.glob("sofamesh-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    venv = work / "venv"
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True
    )
    cwd = work / "empty"
    cwd.mkdir()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
        check=True,
        timeout=600,
    )
    (pkg,) = (venv / "lib").glob("python3*/site-packages/sofamesh")
    before = _listing(pkg)
    no_write = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    _tree(pkg, lambda m: m & no_write)
    try:
        yield Installed(venv, cwd, pkg)
    finally:
        _tree(pkg, lambda m: m | stat.S_IWUSR)
    assert _listing(pkg) == before, "a command wrote inside the installed package"


def _listing(pkg: Path) -> dict[str, int]:
    return {str(p.relative_to(pkg)): p.stat().st_size for p in pkg.rglob("*") if p.is_file()}


def test_the_package_is_read_only_to_its_commands(installed):
    """The guard itself: a write into the package through the same wrapper fails."""
    probe = installed.pkg / "probe.txt"
    argv = [*installed.sofamesh[:-1], "touch", str(probe)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0 and not probe.exists(), out


def test_the_wheel_ships_no_build_tools(installed):
    names = {d["name"].lower() for d in json.loads(installed.pip("list", "--format=json"))}
    assert "sofamesh" in names
    for build_only in ("grpcio-tools", "cython", "setuptools-scm"):
        assert build_only not in names, f"{build_only} installed at run time"
    for runtime in ("grpcio", "protobuf", "xds-protos", "uvloop"):
        assert runtime in names, f"{runtime} missing from the wheel's dependencies"


def test_the_wheel_carries_every_compiled_extension(installed):
    """A wheel built without its .pyx sources is a pure wheel that cannot start."""
    sources = sorted(
        ".".join(p.relative_to(ROOT / "src").with_suffix("").parts)
        for p in (ROOT / "src" / "sofamesh" / "_core").rglob("*.pyx")
    )
    code = (
        "import importlib, json, sys; "
        "print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", code, *sources],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)
    for mod in sources:
        assert files[mod].endswith(".so"), (mod, files[mod])
        assert str(installed.venv) in files[mod], (mod, files[mod])


def _dubbo() -> dict:
    any_method = {"method": {"name": {"safe_regex": {"regex": ".*"}}}}
    return dubbo_filter(
        [
            {
                "name": "d",
                "interface": SERVICE,
                "routes": [{"match": any_method, "route": {"cluster": "dubbo_up"}}],
            }
        ]
    )


CHAINS = {
    "http": lambda: [hcm("web")],
    "dubbo": lambda: [_dubbo()],
    "bolt": lambda: [bolt_filter([route_config(SERVICE, "bolt_up")])],
    "auto": lambda: [
        auto_filter([hcm("web"), bolt_filter([route_config(SERVICE, "bolt_up")]), _dubbo()])
    ],
}


def _bootstrap(ports: dict[str, int], web: int, bolt: int, dubbo: int) -> dict:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
        },
        "static_resources": {
            "listeners": [listener(kind, port, CHAINS[kind]()) for kind, port in ports.items()],
            "clusters": [
                cluster("web", [web]),
                cluster("bolt_up", [bolt]),
                cluster("dubbo_up", [dubbo]),
            ],
        },
    }


@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_validate_accepts_each_protocol(installed, kind):
    path = installed.cwd.parent / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(_bootstrap({kind: 10000}, 10001, 10002, 10003)))
    out = installed.run("proxy", "--mode", "validate", "-c", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"configuration '{path}' OK" in out.stdout


def test_lua_without_lupa_is_refused_by_name(installed):
    """The wheel's own dependencies leave out lupa (the `lua` extra): Envoy's Lua cluster
    specifier example is refused by name, with how to get it."""
    path = ROOT / "tests" / "fixtures" / "envoy-examples" / "lua-cluster-specifier_envoy.yaml"
    out = installed.run("proxy", "--mode", "validate", "-c", str(path))
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "inline_cluster_specifier_plugin" in text and "needs the lupa package" in text, text
    assert "pip install 'sofamesh[lua]'" in text, text


def test_one_proxy_serves_every_protocol(installed, tmp_path):
    web = RecordingUpstream(("web",)).start()
    try:
        with NodeServer(tag="b1") as b1, NodeServer(dubbo=True, tag="d1") as d1:
            ports = dict(zip(CHAINS, free_ports(len(CHAINS)), strict=True))
            boot = _bootstrap(ports, web.ports["web"], b1.port, d1.port)
            argv = [*installed.sofamesh, "proxy", "--concurrency", "1", "-l", "warning"]
            proc = ProxyProcess("sofamesh", argv, boot, tmp_path, env=installed.env)
            with proc:
                for kind in ("http", "auto"):
                    conn = http.client.HTTPConnection("127.0.0.1", ports[kind], timeout=5)
                    conn.request("GET", f"/via-{kind}")
                    resp = conn.getresponse()
                    resp.read()
                    conn.close()
                    assert resp.status == 200, (kind, resp.status)
                assert sorted(r.target for r in web.wait_records(2)) == ["/via-auto", "/via-http"]
                for kind in ("bolt", "auto"):
                    got = node_client(ports[kind], [{"method": "who"}])
                    assert got == [{"ok": True, "result": "b1"}], kind
                for kind in ("dubbo", "auto"):
                    got = node_client(ports[kind], [{"method": "who"}], mode="dubbo")
                    assert got == [{"ok": True, "result": "d1"}], kind
    finally:
        web.stop()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_pilot_and_register(installed, tmp_path):
    xds, api, outbound = free_ports(3)
    log = (tmp_path / "pilot.log").open("wb")
    pilot = subprocess.Popen(
        [
            *installed.sofamesh,
            "pilot",
            "--xds-address",
            f"127.0.0.1:{xds}",
            "--api-address",
            f"127.0.0.1:{api}",
            "--outbound-port",
            str(outbound),
            "--listener-address",
            "127.0.0.1",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=installed.cwd,
        env=installed.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{api}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert pilot.poll() is None, (tmp_path / "pilot.log").read_text()
            try:
                assert _get_json(base + "/v1/services") == {"services": []}
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "pilot.log").read_text()
                time.sleep(0.1)
        reg = installed.run(
            "register",
            "--pilot",
            base,
            "--service",
            "reviews",
            "--id",
            "reviews-1",
            "--port",
            "9080",
            "--label",
            "version=v1",
            "--once",
        )
        assert reg.returncode == 0, reg.stdout + reg.stderr
        services = _get_json(base + "/v1/services")["services"]
        assert [s["name"] for s in services] == ["reviews"], services
        inst = _get_json(base + "/v1/services/reviews")["instances"]
        assert [(i["instance_id"], i["port"], i["labels"]) for i in inst] == [
            ("reviews-1", 9080, {"version": "v1"})
        ]
    finally:
        os.killpg(pilot.pid, 15)
        pilot.wait(10)
        log.close()


def test_mixer_serves_its_web_page(installed, tmp_path):
    """The page is package data: the installed mixer serves it and its /api/graph."""
    grpc_port, http_port = free_ports(2)
    log = (tmp_path / "mixer.log").open("wb")
    mixer = subprocess.Popen(
        [
            *installed.sofamesh,
            "mixer",
            "--grpc-address",
            f"127.0.0.1:{grpc_port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
        ],
        cwd=installed.cwd,
        env=installed.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert mixer.poll() is None, (tmp_path / "mixer.log").read_text()
            try:
                graph = _get_json(base + "/api/graph")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "mixer.log").read_text()
                time.sleep(0.1)
        assert graph["nodes"] == [] and graph["edges"] == []
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert r.headers["content-type"].startswith("text/html")
            page = r.read().decode()
        assert "<title>sofamesh mixer</title>" in page and 'fetch("api/graph"' in page
    finally:
        os.killpg(mixer.pid, 15)
        mixer.wait(10)
        log.close()
