"""Three `prism serve` processes on one Redis and one NATS (JetStream) behave
as one service: a write through one replica is read through another, a
consumer group whose members sit on different replicas gets each message
once, and a registry listener on one replica receives a multicast issued on
another. Killing a replica under load loses no acknowledged write or
JetStream message, and a client given every replica's address fails over
(idempotent calls retried on UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NatsServer, PrismProcess, RedisServer

from prism_client import KeyNotFoundError, PrismClient, PrismError

CONFIG = """
[admin]
state_dir = "{state}"

[backends.redis]
type = "redis"
url = "redis://127.0.0.1:{redis_port}"

[backends.js]
type = "nats"
url = "{nats_url}"
jetstream = true

[namespaces.default]
pattern = "keyvalue"
slots = {{ kv = "redis" }}

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "js" }}

[namespaces.devices]
pattern = "multicast-registry"
slots = {{ registry = "redis", messaging = "js" }}
"""


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer, nats_server: NatsServer) -> Iterator[list[PrismProcess]]:
    redis_server.flush()
    nats_server.reset()
    config = CONFIG.replace("{redis_port}", str(redis_server.port)).replace("{nats_url}", nats_server.url)
    config = config.replace("{{", "{").replace("}}", "}")
    # Each replica keeps its own Admin state (none is written here).
    started = [
        PrismProcess(tmp_path / f"replica-{i}", config.replace("{state}", str(tmp_path / f"replica-{i}" / "state")))
        for i in range(3)
    ]
    yield started
    for replica in started:
        replica.stop()


async def test_a_write_on_one_replica_is_read_on_the_others(replicas: list[PrismProcess]) -> None:
    clients = [PrismClient(r.addr) for r in replicas]
    try:
        for i in range(20):
            writer, reader, deleter = clients[i % 3], clients[(i + 1) % 3], clients[(i + 2) % 3]
            await writer.keyvalue.set(f"k{i}", f"v{i}".encode())
            assert await reader.keyvalue.get(f"k{i}") == f"v{i}".encode()
            assert await deleter.keyvalue.delete(f"k{i}")
            with pytest.raises(KeyNotFoundError):
                await writer.keyvalue.get(f"k{i}")
    finally:
        for c in clients:
            await c.close()


async def test_a_consumer_group_across_replicas_gets_each_message_once(replicas: list[PrismProcess]) -> None:
    clients = [PrismClient(r.addr, namespace="events") for r in replicas]
    try:
        subs = [c.pubsub.subscribe("orders", group="billing") for c in clients]
        await asyncio.gather(*(s.ready() for s in subs))
        total = 60
        for i in range(total):
            await clients[i % 3].pubsub.publish("orders", f"o{i}".encode())
        got: list[list[bytes]] = [[] for _ in subs]

        async def drain(index: int) -> None:
            async for message in subs[index]:
                got[index].append(message.payload)

        tasks = [asyncio.create_task(drain(i)) for i in range(len(subs))]
        deadline = time.monotonic() + 20
        while sum(map(len, got)) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # A quiet period: nothing comes twice.
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        received = [payload for member in got for payload in member]
        assert sorted(received) == sorted(f"o{i}".encode() for i in range(total)), [len(m) for m in got]
    finally:
        for c in clients:
            await c.close()


async def test_a_multicast_on_one_replica_reaches_a_listener_on_another(replicas: list[PrismProcess]) -> None:
    clients = [PrismClient(r.addr, namespace="devices") for r in replicas]
    try:
        await clients[0].registry.register("sensor-1", {"type": "sensor"})
        await clients[1].registry.register("sensor-2", {"type": "sensor"})
        inboxes = [clients[0].registry.listen("sensor-1"), clients[1].registry.listen("sensor-2")]
        await asyncio.gather(*(i.ready() for i in inboxes))
        seen = sorted(identity.identity for identity in await clients[2].registry.enumerate({"type": "sensor"}))
        assert seen == ["sensor-1", "sensor-2"]
        result = await clients[2].registry.multicast({"type": "sensor"}, b"read now")
        assert (result.target_count, result.delivered_count, result.failed) == (2, 2, {})
        for inbox in inboxes:
            message = await asyncio.wait_for(anext(inbox), 10)
            assert message.payload == b"read now"
    finally:
        for c in clients:
            await c.close()


async def test_killing_a_replica_under_load_loses_nothing_acknowledged(replicas: list[PrismProcess]) -> None:
    every = [r.addr for r in replicas]
    async with (
        PrismClient(every) as kv,
        PrismClient(every, namespace="events") as publisher,
        PrismClient(replicas[0].addr, namespace="events") as consumer,
        PrismClient(replicas[0].addr) as reader,
    ):
        sub = consumer.pubsub.subscribe("audit", manual_ack=True)
        await sub.ready()
        writes, acked_writes = 300, []
        published: list[bytes] = []
        failed_publishes = 0

        async def write(i: int) -> None:
            nonlocal failed_publishes
            await kv.keyvalue.set(f"w{i}", f"{i}".encode())
            acked_writes.append(i)
            try:
                await publisher.pubsub.publish("audit", f"m{i}".encode())
                published.append(f"m{i}".encode())
            except PrismError:
                # Not retried (a retry could deliver twice): the caller knows it failed.
                failed_publishes += 1

        # Eight calls in flight at a time, so the kill lands mid-call.
        for start in range(0, writes, 8):
            if start == 96:
                replicas[1].kill()
            await asyncio.gather(*(write(i) for i in range(start, min(start + 8, writes))))

        # Every Set succeeded: the ones the dead replica held were retried elsewhere.
        assert sorted(acked_writes) == list(range(writes))
        for i in range(writes):
            assert await reader.keyvalue.get(f"w{i}") == f"{i}".encode()

        received: set[bytes] = set()

        async def drain() -> None:
            async for message in sub:
                received.add(message.payload)
                await message.ack()

        task = asyncio.create_task(drain())
        deadline = time.monotonic() + 30
        while not set(published) <= received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        lost = set(published) - received
        print(f"publishes acknowledged {len(published)}, failed {failed_publishes}, acknowledged but lost {len(lost)}")
        assert not lost
        assert len(published) >= writes - 8 * 4, "most publishes succeed through the surviving replicas"
