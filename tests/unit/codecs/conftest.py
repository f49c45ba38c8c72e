"""Helpers for codec tests: the golden vectors and ways to split a byte stream."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols"
DATA = Path(__file__).resolve().parent / "data"


def golden(name: str) -> bytes:
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"golden vector {path} is missing")
    return path.read_bytes()


def local(name: str) -> bytes:
    return (DATA / name).read_bytes()


def feed_chunks(decoder, data: bytes, cuts: list[int]) -> list:
    """Feed `data` cut at the given offsets; all frames that came out, in order."""
    out = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c <= prev:
            continue
        out.extend(decoder.feed(data[prev:c]))
        prev = c
    return out


def random_cuts(data: bytes, rng: random.Random, n: int) -> list[int]:
    return sorted(rng.randrange(1, len(data)) for _ in range(n)) if len(data) > 1 else []
