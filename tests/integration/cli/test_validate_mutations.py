"""Mutated copies of Envoy's accepted example configs (a field deleted, emptied, zeroed,
negated, given a bad enum, a zero duration, ...), judged by real Envoy 1.40 and by
sofamesh: the verdicts agree (sofamesh may refuse only as "not implemented"), and neither
side crashes. Fixed seeds, so a failure replays."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
import yaml

from sofamesh.config import ConfigError, load_bootstrap
from sofamesh.config.conformance import read_verdicts
from tests.conftest import FIXTURES, envoy_binary

pytestmark = pytest.mark.envoy

CORPUS = FIXTURES / "envoy-examples"
ACCEPTED = [f for f, v, _ in read_verdicts(str(CORPUS)) if v == "accepted"]
MUTATIONS = ("delete", "empty_str", "zero", "neg", "bad_enum", "dup_item", "empty_list", "0s")
PER_SEED = 25


def _paths(o, p=()):
    yield p
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _paths(v, (*p, k))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _paths(v, (*p, i))


def _mutate(doc, rng: random.Random) -> str | None:
    path = rng.choice([p for p in _paths(doc) if p])
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    k, m = path[-1], rng.choice(MUTATIONS)
    if m == "delete":
        del parent[k]
    elif m == "dup_item":
        if not isinstance(parent, list):
            return None
        parent.append(parent[k])
    else:
        parent[k] = {
            "empty_str": "",
            "zero": 0,
            "neg": -1,
            "bad_enum": "NOT_A_VALUE",
            "empty_list": [],
            "0s": "0s",
        }[m]
    return f"{'.'.join(map(str, path))} <- {m}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("mutations")
    shutil.copytree(CORPUS, d, dirs_exist_ok=True)
    return d


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_mutated_examples_get_envoys_verdict(seed, corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    rng = random.Random(seed)
    disagreements = []
    done = 0
    while done < PER_SEED:
        name = rng.choice(ACCEPTED)
        doc = yaml.safe_load((corpus / name).read_text())
        what = _mutate(doc, rng)
        if what is None:
            continue
        done += 1
        (corpus / "m.yaml").write_text(yaml.safe_dump(doc))
        r = subprocess.run(
            [
                envoy_binary(),
                "--mode",
                "validate",
                "-c",
                "m.yaml",
                "-l",
                "critical",
                "--disable-hot-restart",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        try:
            load_bootstrap("m.yaml")
            ours = "accepted"
        except ConfigError as e:
            ours = "unsupported" if e.unsupported_only else "rejected"
        if (r.returncode == 0) != (ours in ("accepted", "unsupported")):
            reason = (r.stdout + r.stderr).strip().splitlines()[-1:] if r.returncode else ""
            disagreements.append((name, what, r.returncode, ours, reason))
    assert disagreements == []
