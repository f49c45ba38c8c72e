"""Declares sofamesh's Cython extensions: every .pyx under src/sofamesh/_core."""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SOFAMESH_DEBUG") == "1"
# SOFAMESH_ONLY=bolt,dubbo builds only the modules whose dotted name contains one of these
# words: several people rebuilding different modules at once do not race on the same .so.
ONLY = [w for w in os.environ.get("SOFAMESH_ONLY", "").split(",") if w]

SRC = Path("src")


def _extensions():
    exts = []
    for pyx in sorted((SRC / "sofamesh" / "_core").rglob("*.pyx")):
        mod = ".".join(pyx.relative_to(SRC).with_suffix("").parts)
        if ONLY and not any(w in mod for w in ONLY):
            continue
        if DEBUG:
            args = ["-O0", "-g3"]
            macros = [("CYTHON_TRACE_NOGIL", "1"), ("SOFAMESH_DEBUG", "1")]
        else:
            args = ["-O2"]
            macros = []
        exts.append(
            Extension(
                mod,
                [str(pyx)],
                extra_compile_args=args,
                define_macros=macros,
            )
        )
    return exts


directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "linetrace": DEBUG,
}

setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives=directives,
        compile_time_env={"SOFAMESH_DEBUG": DEBUG},
        include_path=[str(SRC)],
        nthreads=int(os.environ.get("SOFAMESH_BUILD_JOBS", "2")),
    ),
)
