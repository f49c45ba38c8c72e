"""`sofamesh proxy --mode validate` agrees with Envoy 1.40 on every example config of Envoy's
own repository (fixtures/envoy-examples/envoy-verdicts.tsv, taken with that folder as cwd)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from sofamesh.config.conformance import read_verdicts, reason_key
from sofamesh.proxy import cli
from tests.conftest import FIXTURES, sofamesh_command

CORPUS = FIXTURES / "envoy-examples"
VERDICTS = read_verdicts(str(CORPUS))


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("envoy-examples")
    shutil.copytree(CORPUS, dst, dirs_exist_ok=True)
    return dst


def test_corpus_is_complete():
    assert len(VERDICTS) == 59
    assert sum(v == "accepted" for _, v, _ in VERDICTS) == 46


@pytest.mark.parametrize(("name", "verdict", "reason"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdict_matches_envoy(name, verdict, reason, corpus_copy, monkeypatch, capsys):
    monkeypatch.chdir(corpus_copy)
    rc = cli.main(["--mode", "validate", "-c", name, "-l", "warning"])
    out, err = capsys.readouterr()
    if verdict == "accepted":
        if rc == 0:
            assert f"configuration '{name}' OK" in out
            return
        # Envoy accepts it; sofamesh may refuse only by naming what it does not implement.
        assert rc == 1
        msg = err.split("error initializing configuration", 1)[1]
        findings = [line for line in msg.splitlines() if line.strip()]
        first = findings[0].split("': ", 1)[1]
        for line in [first, *findings[1:]]:
            assert "not implemented by sofamesh" in line, line
            assert line.split(":", 1)[0].strip(), f"no field path in {line!r}"
        return
    assert rc == 1, out + err
    assert "OK" not in out
    key = reason_key(reason)
    reasons = [line for line in err.splitlines() if "not implemented by sofamesh" not in line]
    assert any(key[:90] in line for line in reasons), (key, err)


def test_validate_as_a_process(corpus_copy):
    """The real command line, as a separate process, Envoy's stdout/exit code contract."""
    ok = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", "lua_envoy.yaml"],
        cwd=corpus_copy,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 1
    assert "module 'lib.mylibrary' not found" in ok.stderr
    # Envoy's default log line: [time][thread][critical][main] [file:line] message
    assert re.search(
        r"\]\[critical\]\[main\] \[[^\]]+:\d+\] error initializing "
        r"configuration 'lua_envoy.yaml'",
        ok.stderr,
    ), ok.stderr
    (corpus_copy / "lib").mkdir(exist_ok=True)
    (corpus_copy / "lib" / "mylibrary.lua").write_text("return {}\n")
    again = subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", "lua_envoy.yaml"],
        cwd=corpus_copy,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "module 'lib.mylibrary' not found" not in again.stderr
