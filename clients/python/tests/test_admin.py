"""`client.admin` against two real `prism serve` replicas on a real NATS
JetStream control store: every Admin RPC from Python, with typed results,
and each change made through one replica served by the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import REPO, NatsServer, PrismProcess

from prism_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    NamespaceInfo,
    NotFoundError,
    PrismClient,
)

T = TypeVar("T")

COMPONENT = REPO / "target" / "guest-patterns" / "wasm32-wasip2" / "release" / "keyvalue.wasm"


def variant(component: bytes, n: int) -> bytes:
    """The component with a custom section appended: another digest, the same code."""
    name = b"prism-py-test"
    body = bytes([len(name)]) + name + bytes([n])
    return component + bytes([0, len(body)]) + body


async def eventually(check: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 20.0) -> T:
    """Calls `check` until its answer is accepted (errors count as not yet)."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            answer = await check()
            if accept(answer):
                return answer
            last = answer
        except Exception as err:  # noqa: BLE001 - "not yet", reported below if it lasts
            last = err
        if time.monotonic() > deadline:
            pytest.fail(f"not so within {within} s; last answer: {last!r}")
        await asyncio.sleep(0.05)


def replica_config(nats: NatsServer, state: Path) -> str:
    return f"""
[backends.mem]
type = "memstore"

[backends.control]
type = "nats"
url = "{nats.url}"
jetstream = true

[admin]
allow_unauthenticated = true
store = "control"
state_dir = "{state}"
"""


async def test_admin_from_python_drives_a_fleet(tmp_path: Path, nats_server: NatsServer) -> None:
    nats_server.reset()
    first = PrismProcess(tmp_path / "a", replica_config(nats_server, tmp_path / "state-a"))
    second = PrismProcess(tmp_path / "b", replica_config(nats_server, tmp_path / "state-b"))
    try:
        async with PrismClient(first.addr) as a, PrismClient(second.addr) as b:
            created = await a.admin.create_namespace("pyadmin", "keyvalue", {"kv": "mem"}, settings={"max_value_bytes": 8})
            assert isinstance(created, NamespaceInfo)
            assert created.name == "pyadmin" and created.source == "admin"
            assert created.pattern is not None and created.pattern.world == "keyvalue"
            assert created.settings == {"max_value_bytes": "8"}
            assert [(s.slot, s.backend) for s in created.slots] == [("kv", "mem")]
            assert created.revision > 0

            # Served by the other replica, from the store: its data calls obey the setting.
            async with PrismClient(second.addr, namespace="pyadmin") as data:
                await eventually(lambda: b.admin.get_namespace("pyadmin"), lambda n: n.revision == created.revision)
                with pytest.raises(InvalidArgumentError):
                    await data.keyvalue.set("k", b"123456789")
                await data.keyvalue.set("k", b"12345678")

            updated = await b.admin.update_namespace("pyadmin", settings={"max_value_bytes": 16})
            assert updated.settings == {"max_value_bytes": "16"}
            assert updated.revision > created.revision
            seen = await eventually(lambda: a.admin.get_namespace("pyadmin"), lambda n: n.revision == updated.revision)
            assert seen.settings == {"max_value_bytes": "16"}

            # Both replicas report the revision they serve.
            status = await eventually(
                lambda: a.admin.get_namespace("pyadmin"),
                lambda n: len(n.replicas) == 2 and all(r.revision == n.revision for r in n.replicas),
            )
            assert all(r.address and not r.stale for r in status.replicas)

            # An upload through one replica deploys through the other.
            uploaded = await a.admin.upload_pattern(variant(COMPONENT.read_bytes(), 1), "py.wasm")
            assert len(uploaded.digest) == 64 and uploaded.world == "keyvalue" and uploaded.label == "py.wasm"
            listed = await eventually(b.admin.list_patterns, lambda ps: any(p.digest == uploaded.digest for p in ps))
            assert {"keyvalue", "pubsub", "multicast-registry"} <= {p.label for p in listed}
            deployed = await b.admin.deploy("pyadmin", uploaded.digest, canary_percent=50)
            assert deployed.rollout is not None and deployed.rollout.canary_percent == 50 and not deployed.rollout.shadow
            assert deployed.rollout.candidate is not None and deployed.rollout.candidate.digest == uploaded.digest
            with pytest.raises(FailedPreconditionError):
                await b.admin.delete_pattern(uploaded.digest)
            promoted = await eventually(lambda: a.admin.promote("pyadmin"), lambda n: True)
            assert promoted.pattern is not None and promoted.pattern.digest == uploaded.digest and promoted.rollout is None
            rolled = await eventually(lambda: b.admin.rollback("pyadmin"), lambda n: n.previous is not None)
            assert rolled.pattern is not None and rolled.pattern.world == "keyvalue"
            assert rolled.previous is not None and rolled.previous.digest == uploaded.digest

            names = {n.name for n in await a.admin.list_namespaces()}
            assert "pyadmin" in names

            assert await b.admin.delete_namespace("pyadmin", purge=True) == 1
            await eventually(lambda: a.admin.list_namespaces(), lambda ns: all(n.name != "pyadmin" for n in ns))
            with pytest.raises(NotFoundError):
                await a.admin.get_namespace("pyadmin")
            assert await eventually(lambda: a.admin.delete_pattern(uploaded.digest), lambda removed: removed)

            with pytest.raises(InvalidArgumentError):
                await a.admin.upload_pattern(b"")
            with pytest.raises(InvalidArgumentError):
                await a.admin.create_namespace("bad name!", "keyvalue", {"kv": "mem"})
    finally:
        first.stop()
        second.stop()
