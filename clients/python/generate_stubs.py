"""Regenerates prism_client/_pb from ../../proto (run by `just proto-python`).

The protos are staged under a `prism_client/_pb/` path so the generated
modules import each other as `prism_client._pb.*`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "prism" / "v1"
OUT = HERE / "prism_client" / "_pb"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "prism_client" / "_pb"
        staged.mkdir(parents=True)
        protos = sorted(PROTO_ROOT.glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, staged / proto.name)
        for old in OUT.glob("*_pb2*.py*"):
            old.unlink()
        args = [
            "protoc",
            f"-I{tmp}",
            f"--python_out={HERE}",
            f"--pyi_out={HERE}",
            f"--grpc_python_out={HERE}",
            *[str(staged / p.name) for p in protos],
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
