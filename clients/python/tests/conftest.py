"""Fixtures: a real `prism` process per test, started on a free port from a
config written to a temp dir, stopped with SIGTERM (which must be graceful).

Every test runs twice: with its namespaces on MemStore and on Redis (a real
redis-server this session starts on a free port), with the same test code."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from prism_client import PrismClient

REPO = Path(__file__).resolve().parents[3]
PRISM_BIN = Path(os.environ.get("PRISM_BIN", REPO / "target" / "release" / "prism"))

NAMESPACES = """
[namespaces.default]
pattern = "keyvalue"
slots = { kv = "store" }

[namespaces.other]
pattern = "keyvalue"
slots = { kv = "store" }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_command(port: int, *args: str) -> bytes:
    """One RESP command over a raw socket (the client has no Redis dependency)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(payload.encode())
        return conn.recv(1024)


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `just test` installs it")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if _redis_command(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def flush(self) -> None:
        _redis_command(self.port, "FLUSHALL")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["memstore", "redis"])
def backend_toml(request: pytest.FixtureRequest) -> str:
    """The `[backends.store]` table the namespaces use: each test runs on both."""
    if request.param == "memstore":
        return '[backends.store]\ntype = "memstore"\n'
    redis: RedisServer = request.getfixturevalue("redis_server")
    redis.flush()
    return f'[backends.store]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis.port}"\n'


@pytest.fixture
def prism_addr(tmp_path: Path, backend_toml: str) -> Iterator[str]:
    """Address of a fresh prism server whose `default` and `other` namespaces share one backend."""
    if not PRISM_BIN.exists():
        pytest.fail(f"{PRISM_BIN} is missing; build it with `just build` (or set PRISM_BIN)")
    config = tmp_path / "prism.toml"
    config.write_text(backend_toml + NAMESPACES)
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
