"""Regenerates prism_client/_pb from ../../proto (run by `just proto-python`).

The protos are staged under a `prism_client/_pb/` path (their
`import "prism/v1/X.proto"` lines rewritten to match) so the generated modules
import each other as `prism_client._pb.*`. The old stubs are replaced only
once protoc has succeeded.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "prism" / "v1"
OUT = HERE / "prism_client" / "_pb"
IMPORT = re.compile(r'^(import\s+(?:public\s+)?")prism/v1/([^"/]+\.proto")', re.MULTILINE)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / "prism_client" / "_pb"
        staged.mkdir(parents=True)
        protos = sorted(PROTO_ROOT.glob("*.proto"))
        for proto in protos:
            text = IMPORT.sub(r"\1prism_client/_pb/\2", proto.read_text())
            (staged / proto.name).write_text(text)
        out = Path(tmp) / "out"
        out.mkdir()
        args = [
            "protoc",
            f"-I{Path(tmp) / 'src'}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *[str(staged / p.name) for p in protos],
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        for old in OUT.glob("*_pb2*.py*"):
            old.unlink()
        for generated in (out / "prism_client" / "_pb").iterdir():
            shutil.copy(generated, OUT / generated.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
