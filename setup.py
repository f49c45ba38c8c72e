"""Declares sofamesh's Cython extensions (every .pyx under src/sofamesh/_core) and compiles
proto/ (sofamesh's own filter messages) into the package as it is built.

The proto step lives here, not in pyproject.toml, because it is a build step: setuptools
runs `build_protos` as a sub-command of `build`, so `pip install .`, `pip wheel .` and
`pip install -e .` all get it. Its tools (grpcio-tools' protoc; xds-protos for the Envoy
messages our .proto files import) are build requirements only.
"""

import importlib
import os
import re
import tempfile
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Command, Extension, setup
from setuptools.command.build import build

DEBUG = os.environ.get("SOFAMESH_DEBUG") == "1"
# SOFAMESH_ONLY=bolt,dubbo builds only the modules whose dotted name contains one of these
# words: several people rebuilding different modules at once do not race on the same .so.
ONLY = [w for w in os.environ.get("SOFAMESH_ONLY", "").split(",") if w]

SRC = Path("src")
PROTO = Path("proto")
# One FileDescriptorSet for every proto/**/*.proto: filters/network/_proto.py reads it.
PROTO_SET = Path("sofamesh", "_gen", "protos.binpb")
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def compile_protos() -> bytes:
    """proto/**/*.proto compiled by protoc into a serialized FileDescriptorSet (our files
    only). The Envoy and Google files they import are handed to protoc as descriptors taken
    from their Python modules (--descriptor_set_in), so no Envoy .proto sources are needed."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    own = sorted(p.relative_to(PROTO).as_posix() for p in PROTO.rglob("*.proto"))
    imports = set()
    for rel in own:
        imports.update(_IMPORT.findall((PROTO / rel).read_text()))
    pool = descriptor_pool.Default()
    deps = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(fd):
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        deps.file.append(fdp)

    for name in sorted(imports - set(own)):
        importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
        add(pool.FindFileByName(name))
    with tempfile.TemporaryDirectory() as tmp:
        deps_path = Path(tmp, "deps.binpb")
        out = Path(tmp, "out.binpb")
        deps_path.write_bytes(deps.SerializeToString())
        rc = protoc.main(
            [
                "protoc",
                f"--descriptor_set_in={deps_path}",
                f"--proto_path={PROTO}",
                f"--descriptor_set_out={out}",
                *own,
            ]
        )
        if rc != 0 or not out.exists():
            raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
        return out.read_bytes()


class build_protos(Command):
    description = f"compile proto/ into {PROTO_SET}"
    user_options = [("inplace", "i", "write into src/ (what an editable install reads)")]
    boolean_options = ["inplace"]

    def initialize_options(self):
        self.inplace = False
        self.editable_mode = False  # set by setuptools for `pip install -e .`
        self.build_lib = None

    def finalize_options(self):
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _in_src(self):
        return self.inplace or self.editable_mode

    def run(self):
        out = SRC / PROTO_SET if self._in_src() else Path(self.build_lib, PROTO_SET)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(compile_protos())

    def get_source_files(self):
        return [str(p) for p in sorted(PROTO.rglob("*.proto"))]

    def get_outputs(self):
        return [str(Path(self.build_lib, PROTO_SET))]

    def get_output_mapping(self):
        if not self._in_src():
            return {}
        return {str(Path(self.build_lib, PROTO_SET)): str(SRC / PROTO_SET)}


class build_with_protos(build):
    sub_commands = [("build_protos", None), *build.sub_commands]


def _extensions():
    if not list((SRC / "sofamesh" / "_core").rglob("*.pyx")):
        # an sdist that lost its sources would otherwise build a pure wheel that cannot start
        raise RuntimeError("no .pyx under src/sofamesh/_core: the source tree is incomplete")
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
    cmdclass={"build": build_with_protos, "build_protos": build_protos},
    ext_modules=cythonize(
        _extensions(),
        compiler_directives=directives,
        compile_time_env={"SOFAMESH_DEBUG": DEBUG},
        include_path=[str(SRC)],
        nthreads=int(os.environ.get("SOFAMESH_BUILD_JOBS", "2")),
    ),
)
