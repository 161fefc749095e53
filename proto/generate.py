"""Regenerates the Python stubs of proto/policy.proto into proto/ (import path xvla.proto).

Run:  python proto/generate.py            (writes the stubs)
      python proto/generate.py --check    (exit 1 if the committed stubs are stale)

protoc names generated imports after the .proto's path below its include root, so the
.proto is staged as ``xvla/proto/policy.proto``: the gRPC stub then imports
``from xvla.proto import policy_pb2``, which is where setuptools installs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "policy.proto"
OUTPUTS = ("policy_pb2.py", "policy_pb2.pyi", "policy_pb2_grpc.py", "policy_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc (grpc_tools) with mypy-protobuf typed stubs; returns the written files."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: grpcio-tools

    # protoc finds the mypy-protobuf plugins on PATH; they live next to this interpreter.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staged = root / "xvla" / "proto" / "policy.proto"
        staged.parent.mkdir(parents=True)
        shutil.copy(PROTO, staged)
        gen = root / "gen"
        gen.mkdir()
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            str(staged.relative_to(root)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed: " + " ".join(args))
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            src = gen / "xvla" / "proto" / name
            dst = out_dir / name
            dst.write_bytes(src.read_bytes())
            written.append(dst)
        return written


def stale_files() -> list[str]:
    """Names of committed stubs that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.name for p in fresh if not (HERE / p.name).exists() or (HERE / p.name).read_bytes() != p.read_bytes()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the stubs are up to date")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale stubs: " + ", ".join(stale) + " (run: python proto/generate.py)")
            return 1
        print("stubs up to date")
        return 0
    for path in generate(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
