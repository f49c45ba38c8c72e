"""The hot path must be the compiled one: a silent fallback to slow code fails here."""

import importlib
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "sofamesh" / "_core"
MODULES = sorted(
    ".".join(("sofamesh", "_core") + p.relative_to(CORE).with_suffix("").parts)
    for p in CORE.rglob("*.pyx")
)


def test_there_are_compiled_modules():
    assert "sofamesh._core.stats" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_is_compiled_extension(name):
    mod = importlib.import_module(name)
    assert mod.__file__.endswith(".so"), f"{name} loaded from {mod.__file__}, not a compiled .so"
    assert not Path(mod.__file__).with_suffix("").with_suffix(".py").exists()
