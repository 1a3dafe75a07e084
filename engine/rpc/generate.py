"""Regenerate the committed gRPC code in ``engine/rpc/`` from ``protos/``.

``python -m engine.rpc.generate`` rewrites the files; ``--check`` only says whether they match
(exit 1 and the names of the files that differ when not). Tests call :func:`generate` into a
temporary directory and compare.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from grpc_tools import protoc

#: The repository root (this file is ``engine/rpc/generate.py``).
ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PROTO = "rungs/v1/transcoder.proto"
PACKAGE_DIR = Path(__file__).resolve().parent
#: Every file :func:`generate` writes, by name inside the package directory.
GENERATED = ("transcoder_pb2.py", "transcoder_pb2.pyi", "transcoder_pb2_grpc.py")

# protoc names the module by the proto's path (``rungs.v1``), which is not an importable package
# here; the gRPC module's import of the messages is made relative so it works inside engine.rpc.
_ABSOLUTE_IMPORT = "from rungs.v1 import transcoder_pb2 as"
_RELATIVE_IMPORT = "from . import transcoder_pb2 as"


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into ``out_dir`` and return their paths."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="rungs-protoc-") as tmp:
        status = protoc.main([
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_ROOT / PROTO),
        ])
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} on {PROTO}")
        produced = Path(tmp) / Path(PROTO).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (produced / name).read_text(encoding="utf-8")
            if name.endswith("_grpc.py"):
                if _ABSOLUTE_IMPORT not in text:
                    raise RuntimeError(f"{name}: protoc no longer writes {_ABSOLUTE_IMPORT!r}")
                text = text.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT)
            target = out_dir / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def differences(generated_dir: Path, committed_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of the generated files that are missing from, or differ in, ``committed_dir``."""
    different = []
    for name in GENERATED:
        committed = committed_dir / name
        if not committed.is_file() or committed.read_bytes() != (generated_dir / name).read_bytes():
            different.append(name)
    return different


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.rpc.generate", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of rewriting them")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(PACKAGE_DIR):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="rungs-generated-") as tmp:
        generate(Path(tmp))
        stale = differences(Path(tmp))
    for name in stale:
        print(f"engine/rpc/{name} differs from {PROTO}; run python -m engine.rpc.generate",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
