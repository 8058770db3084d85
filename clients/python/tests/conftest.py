"""Fixtures: a real `prism` process per test, started on a free port from a
config written to a temp dir, stopped with SIGTERM (which must be graceful)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from prism_client import PrismClient

REPO = Path(__file__).resolve().parents[3]
PRISM_BIN = Path(os.environ.get("PRISM_BIN", REPO / "target" / "release" / "prism"))

CONFIG = """
[backends.mem]
type = "memstore"

[namespaces.default]
pattern = "keyvalue"
slots = { kv = "mem" }

[namespaces.other]
pattern = "keyvalue"
slots = { kv = "mem" }
"""


@pytest.fixture
def prism_addr(tmp_path: Path) -> Iterator[str]:
    """Address of a fresh prism server (MemStore) serving `default` and `other`."""
    if not PRISM_BIN.exists():
        pytest.fail(f"{PRISM_BIN} is missing; build it with `just build` (or set PRISM_BIN)")
    config = tmp_path / "prism.toml"
    config.write_text(CONFIG)
    log = (tmp_path / "prism.log").open("w")
    proc = subprocess.Popen(
        [str(PRISM_BIN), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("prism: serving on "):
        proc.kill()
        proc.wait()
        pytest.fail(f"prism did not start: {line!r}\n{(tmp_path / 'prism.log').read_text()}")
    addr = line.removeprefix("prism: serving on ").strip()
    try:
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("prism did not shut down within 15 s of SIGTERM")
        log.close()
        assert code == 0, f"prism exited with {code}:\n{(tmp_path / 'prism.log').read_text()}"


@pytest.fixture
async def client(prism_addr: str) -> AsyncIterator[PrismClient]:
    async with PrismClient(prism_addr) as c:
        yield c
