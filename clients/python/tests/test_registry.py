"""The Multicast Registry through the Python client against a real prism
server, on three backend pairs (MemStore for identities and multicasts; Redis
for identities and NATS JetStream for multicasts; PostgreSQL for identities and
core NATS for multicasts): the `registry_addr` fixture's `default` and `other`
namespaces are registries and its `kv` namespace is KeyValue."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prism_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    Identity,
    Inbox,
    InboxMessage,
    InvalidArgumentError,
    KeyNotFoundError,
    NamespaceNotFoundError,
    PrismClient,
)

from conftest import REPO

# A test that still runs after this long is cancelled (and fails) instead of
# hanging the suite on a message that never comes.
WATCHDOG_SECONDS = 30.0
# How long a test waits for one message it expects.
RECEIVE_TIMEOUT = 5.0
# How long a test waits to be sure a message does NOT come.
QUIET_PERIOD = 0.5
# How long after its TTL an identity may still be seen (DESIGN: "within 1 s"),
# plus slack for a loaded machine.
EXPIRY_GRACE = 1.0 + 1.0
# The message metadata key the built-in pattern adds to every multicast: the
# identity it was addressed to (guest-patterns/multicast-registry/src/metadata.rs).
IDENTITY_KEY = "prism-registry-identity"


@pytest.fixture(autouse=True)
async def _watchdog() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()

    def fire() -> None:
        for task in asyncio.all_tasks(loop):
            if task.get_coro().__qualname__.startswith("test_"):  # type: ignore[union-attr]
                task.cancel(f"test still running after {WATCHDOG_SECONDS} s")

    handle = loop.call_later(WATCHDOG_SECONDS, fire)
    yield
    handle.cancel()


async def receive(inbox: Inbox, timeout: float = RECEIVE_TIMEOUT) -> InboxMessage:
    return await asyncio.wait_for(anext(inbox), timeout)


async def assert_quiet(inbox: Inbox, period: float = QUIET_PERIOD) -> None:
    """Nothing (more) is delivered to `inbox` within `period`."""
    try:
        message = await asyncio.wait_for(anext(inbox), period)
    except asyncio.TimeoutError:
        return
    pytest.fail(f"unexpected delivery: {message!r}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Polls `check` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def nest(levels: int) -> dict[str, Any]:
    """Metadata whose maps nest `levels` deep: {"n": {"n": ... {"leaf": 1}}}."""
    metadata: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        metadata = {"n": metadata}
    return metadata


def ids(identities: list[Identity]) -> list[str]:
    return [i.identity for i in identities]


def near_now(moment: datetime) -> bool:
    now = datetime.now(timezone.utc)
    return moment.tzinfo is not None and now - timedelta(seconds=60) <= moment <= now + timedelta(seconds=60)


# -- register / get / heartbeat / unregister -------------------------------------


async def test_register_get_replace_and_already_exists(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    first = await reg.register("sensor-1", {"type": "sensor", "floor": 1})
    assert first.identity == "sensor-1"
    assert first.metadata == {"type": "sensor", "floor": 1}
    assert near_now(first.registered_at)
    assert first.registered_at.utcoffset() == timedelta(0)
    assert first.expires_at is None and first.ttl is None
    assert await reg.get("sensor-1") == first

    # Re-registering replaces metadata and TTL.
    second = await reg.register("sensor-1", {"type": "sensor", "floor": 2}, ttl=30)
    assert second.metadata == {"type": "sensor", "floor": 2}
    assert second.ttl == 30.0
    assert second.expires_at is not None
    assert second.expires_at - second.registered_at == timedelta(seconds=30)
    got = await reg.get("sensor-1")
    assert got.metadata == {"type": "sensor", "floor": 2}
    assert got.ttl == 30.0 and got.expires_at == second.expires_at

    # replace=False refuses a registered identity and leaves it as it was.
    with pytest.raises(AlreadyExistsError) as info:
        await reg.register("sensor-1", {"type": "impostor"}, replace=False)
    assert "sensor-1" in str(info.value)
    assert (await reg.get("sensor-1")).metadata == {"type": "sensor", "floor": 2}
    # ... and registers a new one.
    fresh = await reg.register("sensor-2", {"type": "sensor"}, ttl=0.25, replace=False)
    assert fresh.metadata == {"type": "sensor"} and fresh.ttl == 0.25

    # No metadata is an empty map; the client refuses bad arguments before sending.
    assert (await reg.register("bare")).metadata == {}
    with pytest.raises(InvalidArgumentError):
        await reg.register("sensor-3", {"type": "sensor"}, ttl=0)
    with pytest.raises(InvalidArgumentError):
        await reg.register(3, {})  # type: ignore[arg-type]
    with pytest.raises(KeyNotFoundError):
        await reg.get("sensor-3")


async def test_get_of_unknown_identity_is_key_not_found(registry_client: PrismClient) -> None:
    with pytest.raises(KeyNotFoundError):
        await registry_client.registry.get("nobody")
    with pytest.raises(KeyNotFoundError):
        await registry_client.registry.heartbeat("nobody")


async def test_heartbeat_renews_ttl_and_expiry_removes_identity(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    ttl = 1.0
    registered = await reg.register("beating", {"type": "sensor"}, ttl=ttl)
    await reg.register("silent", {"type": "sensor"}, ttl=ttl)
    start = time.monotonic()
    assert ids(await reg.enumerate({"type": "sensor"})) == ["beating", "silent"]
    assert registered.expires_at is not None
    last_expiry = registered.expires_at

    # Heartbeats every 0.25 s keep `beating` alive for 4 TTLs; `silent` expires.
    silent_gone_after: float | None = None
    while time.monotonic() - start < 4 * ttl:
        renewed = await reg.heartbeat("beating")
        assert renewed.identity == "beating" and renewed.ttl == ttl
        assert renewed.expires_at is not None and renewed.expires_at >= last_expiry
        last_expiry = renewed.expires_at
        assert (await reg.get("beating")).metadata == {"type": "sensor"}
        if silent_gone_after is None and "silent" not in ids(await reg.enumerate({"type": "sensor"})):
            silent_gone_after = time.monotonic() - start
        await asyncio.sleep(0.25)
    assert last_expiry > registered.expires_at  # renewed from a later "now"
    assert silent_gone_after is not None, "an identity outlived its TTL by 3 s"
    assert silent_gone_after <= ttl + EXPIRY_GRACE, f"gone only {silent_gone_after:.2f} s after registering"
    with pytest.raises(KeyNotFoundError):
        await reg.get("silent")
    with pytest.raises(KeyNotFoundError):
        await reg.heartbeat("silent")

    # Without heartbeats, `beating` expires too: gone from get, enumerate and multicast.
    async def beating_gone() -> bool:
        try:
            await reg.get("beating")
        except KeyNotFoundError:
            return True
        return False

    await eventually(beating_gone, ttl + EXPIRY_GRACE, "the identity did not expire")
    assert "beating" not in ids(await reg.enumerate())
    result = await reg.multicast({"type": "sensor"}, b"anyone?")
    assert (result.target_count, result.delivered_count) == (0, 0)
    with pytest.raises(KeyNotFoundError):
        await reg.heartbeat("beating")
    # An expired identity can be registered again with replace=False.
    again = await reg.register("beating", {"type": "sensor"}, replace=False)
    assert again.expires_at is None


async def test_unregister_is_idempotent(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    await reg.register("temp-1", {"type": "sensor"})
    assert await reg.unregister("temp-1") is True
    assert await reg.unregister("temp-1") is False
    assert await reg.unregister("never-registered") is False
    with pytest.raises(KeyNotFoundError):
        await reg.get("temp-1")
    assert await reg.enumerate() == []


# -- enumerate --------------------------------------------------------------------

FLEET: dict[str, dict[str, Any]] = {
    "sensor-1": {"type": "sensor", "floor": 1, "location": {"building": "HQ", "room": "101"}, "tags": ["temp", "hum"]},
    "sensor-2": {"type": "sensor", "floor": 2, "location": {"building": "HQ"}, "tags": ["temp"]},
    "sensor-3": {"type": "sensor", "floor": 3.0, "location": {"building": "Annex"}},
    "actuator-1": {"type": "actuator", "floor": 1, "location": {"building": "Annex"}},
    "gateway-1": {"type": "gateway"},  # no floor, no location
}


async def register_fleet(client: PrismClient) -> None:
    await asyncio.gather(*(client.registry.register(name, md) for name, md in FLEET.items()))


# (filter, the identities it selects, in identity order)
FILTER_CASES: list[tuple[dict[str, Any] | None, list[str]]] = [
    (None, ["actuator-1", "gateway-1", "sensor-1", "sensor-2", "sensor-3"]),
    ({}, ["actuator-1", "gateway-1", "sensor-1", "sensor-2", "sensor-3"]),
    ({"type": "sensor"}, ["sensor-1", "sensor-2", "sensor-3"]),
    ({"type": "sensor", "floor": 1}, ["sensor-1"]),
    # Type-aware equality: 1 == 1.0 and 3.0 == 3, but 1 != "1".
    ({"floor": 1.0}, ["actuator-1", "sensor-1"]),
    ({"floor": 3}, ["sensor-3"]),
    ({"floor": "1"}, []),
    ({"floor.gte": 2}, ["sensor-2", "sensor-3"]),
    ({"floor.lt": 2, "type.ne": "actuator"}, ["sensor-1"]),
    ({"location.building": "HQ"}, ["sensor-1", "sensor-2"]),
    ({"location.room": "*"}, ["sensor-1"]),
    ({"$or": [{"type": "actuator"}, {"floor.gt": 2}]}, ["actuator-1", "sensor-3"]),
    ({"$and": [{"type": "sensor"}, {"$not": {"location.building": "HQ"}}]}, ["sensor-3"]),
    ({"tags.contains": "hum"}, ["sensor-1"]),
    ({"type.in": ["gateway", "actuator"]}, ["actuator-1", "gateway-1"]),
    ({"type.startswith": "sens", "location.building.endswith": "Q"}, ["sensor-1", "sensor-2"]),
    ({"type.regex": "^(gate|act)"}, ["actuator-1", "gateway-1"]),
    ({"floor.type": "number"}, ["actuator-1", "sensor-1", "sensor-2", "sensor-3"]),
    # A missing field matches only `ne`, `exists: false` and `$not`.
    ({"floor.exists": False}, ["gateway-1"]),
    ({"floor.ne": 1}, ["gateway-1", "sensor-2", "sensor-3"]),
    ({"$not": {"floor": 1}}, ["gateway-1", "sensor-2", "sensor-3"]),
    ({"floor.lt": 100}, ["actuator-1", "sensor-1", "sensor-2", "sensor-3"]),
    ({"location.building": "Annex", "floor.exists": True}, ["actuator-1", "sensor-3"]),
    ({"no.such.field": "x"}, []),
]


async def test_enumerate_filters(registry_client: PrismClient) -> None:
    await register_fleet(registry_client)
    for filter, expected in FILTER_CASES:
        found = await registry_client.registry.enumerate(filter)
        assert ids(found) == expected, filter
        for identity in found:
            assert identity.metadata == FLEET[identity.identity]
        # Multicast selects with the same language.
        assert (await registry_client.registry.multicast(filter, b"ping")).target_count == len(expected), filter


async def test_enumerate_follows_every_page(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    names = [f"dev-{i:03}" for i in range(250)]
    for start in range(0, len(names), 50):
        await asyncio.gather(
            *(reg.register(name, {"n": i, "even": i % 2 == 0}) for i, name in enumerate(names[start : start + 50], start))
        )

    # Every page of the default size, each identity once, in identity order.
    assert ids(await reg.enumerate()) == names
    assert ids(await reg.enumerate({"even": True})) == names[::2]

    # Pages of 40 by hand: none larger than asked, together every identity once.
    seen: list[str] = []
    pages = 0
    cursor = ""
    while True:
        page, cursor = await reg.enumerate_page(None, cursor, limit=40)
        assert len(page) <= 40
        seen.extend(ids(page))
        pages += 1
        if not cursor:
            break
        assert pages < 100, "the cursor never ran out"
    assert seen == names
    assert pages >= 7

    # With a filter, too.
    seen = []
    cursor = ""
    while True:
        page, cursor = await reg.enumerate_page({"n.gte": 100, "even": False}, cursor, limit=30)
        seen.extend(ids(page))
        if not cursor:
            break
    assert seen == [name for i, name in enumerate(names) if i >= 100 and i % 2 == 1]


# -- multicast and listen -----------------------------------------------------------


async def test_listen_and_multicast_reach_exactly_the_matching_listeners(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    await register_fleet(registry_client)
    inboxes = {name: reg.listen(name) for name in ["sensor-1", "sensor-2", "actuator-1", "gateway-1"]}

    before_ms = int(time.time() * 1000)
    result = await reg.multicast({"type": "sensor", "floor.lte": 2}, {"command": "read", "ids": [1, 2], "at": 1.5})
    assert (result.target_count, result.delivered_count, result.failed) == (2, 2, {})
    for name in ["sensor-1", "sensor-2"]:
        message = await receive(inboxes[name])
        assert message.json() == {"command": "read", "ids": [1, 2], "at": 1.5}
        assert message.metadata == {"content-type": "application/json", IDENTITY_KEY: name}
        assert message.id
        assert before_ms - 60_000 <= message.timestamp_ms <= int(time.time() * 1000) + 60_000

    # Bytes go as they are, with the caller's metadata only.
    result = await reg.multicast({"type": "actuator"}, b"\x00\xffopen", metadata={"valve": "3"})
    assert (result.target_count, result.delivered_count) == (1, 1)
    message = await receive(inboxes["actuator-1"])
    assert message.payload == b"\x00\xffopen"  # the first: the sensor command did not come here
    assert message.metadata == {"valve": "3", IDENTITY_KEY: "actuator-1"}

    # No filter: everyone, including sensor-3 that has no listener.
    result = await reg.multicast(None, "everyone")
    assert (result.target_count, result.delivered_count) == (5, 5)
    for name, inbox in inboxes.items():
        message = await receive(inbox)
        assert message.json() == "everyone", name
    for inbox in inboxes.values():
        await assert_quiet(inbox, 0.2)

    # Nobody matches: nothing is sent.
    result = await reg.multicast({"type": "toaster"}, {"command": "toast"})
    assert (result.target_count, result.delivered_count, result.failed) == (0, 0, {})


async def test_malformed_filter_is_invalid_argument_and_sends_nothing(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    await register_fleet(registry_client)
    inbox = reg.listen("sensor-1")
    await inbox.ready()
    malformed: list[tuple[dict[str, Any], str]] = [
        ({"$or": {"type": "sensor"}}, "$or"),  # $or takes a list
        ({"type": "sensor", "floor.in": 1}, "floor.in"),  # in takes a list
        ({"$nor": [{"type": "sensor"}]}, "$nor"),  # no such operator
        ({"$and": [{"type": "sensor"}, {"floor.gte": True}]}, "floor.gte"),  # the inner key is named
        ({"location..building": "HQ"}, "location..building"),  # empty path segment
    ]
    for bad, key in malformed:
        with pytest.raises(InvalidArgumentError) as info:
            await reg.multicast(bad, {"command": "reboot"})
        assert key in str(info.value), (bad, str(info.value))
        with pytest.raises(InvalidArgumentError) as info:
            await reg.enumerate(bad)
        assert key in str(info.value), (bad, str(info.value))
    # The client refuses what is not JSON-like before anything is sent.
    with pytest.raises(InvalidArgumentError) as info:
        await reg.multicast({"floor.in": {1, 2}}, {"command": "reboot"})
    assert "filter['floor.in']" in str(info.value)
    with pytest.raises(InvalidArgumentError):
        await reg.multicast({"type": "sensor"}, {"not", "json"})

    # The next message sensor-1 receives is this one: none of the refused ones came.
    result = await reg.multicast({"type": "sensor", "floor": 1}, {"command": "ok"})
    assert result.target_count == 1
    assert (await receive(inbox)).json() == {"command": "ok"}
    await assert_quiet(inbox, 0.2)


async def test_listen_then_multicast_in_one_client_is_deterministic(registry_client: PrismClient) -> None:
    # No ready(): multicast itself waits for the client's own pending inboxes.
    reg = registry_client.registry
    for round_ in range(3):
        await reg.register(f"fresh-{round_}", {"round": round_})
        async with reg.listen(f"fresh-{round_}") as inbox:
            result = await reg.multicast({"round": round_}, b"hello")
            assert result.target_count == 1
            assert (await receive(inbox)).payload == b"hello"
        assert inbox.closed
        with pytest.raises(StopAsyncIteration):
            await receive(inbox)


async def test_namespaces_are_isolated(registry_addr: str) -> None:
    async with PrismClient(registry_addr) as default, PrismClient(registry_addr, namespace="other") as other:
        await default.registry.register("shared-id", {"ns": "default"})
        with pytest.raises(KeyNotFoundError):
            await other.registry.get("shared-id")
        assert await other.registry.enumerate() == []
        assert (await other.registry.multicast(None, b"x")).target_count == 0
        # The same identity in `other` is a different one.
        await other.registry.register("shared-id", {"ns": "other"}, replace=False)
        assert (await default.registry.get("shared-id")).metadata == {"ns": "default"}
        assert (await other.registry.get("shared-id")).metadata == {"ns": "other"}

        in_default = default.registry.listen("shared-id")
        in_other = other.registry.listen("shared-id")
        await asyncio.gather(in_default.ready(), in_other.ready())
        assert (await default.registry.multicast(None, b"for-default")).target_count == 1
        assert (await other.registry.multicast(None, b"for-other")).target_count == 1
        assert (await receive(in_default)).payload == b"for-default"
        assert (await receive(in_other)).payload == b"for-other"
        await assert_quiet(in_default, 0.2)
        await assert_quiet(in_other, 0.2)
        assert await other.registry.unregister("shared-id") is True
        assert (await default.registry.get("shared-id")).identity == "shared-id"


async def test_typed_metadata_round_trip(registry_client: PrismClient) -> None:
    reg = registry_client.registry
    metadata: dict[str, Any] = {
        "int": 1,
        "float": 1.0,
        "negative": -7,
        "int64_max": 2**63 - 1,
        "int64_min": -(2**63),
        "fraction": 0.1,
        "string": "naïve ☃",
        "empty_string": "",
        "true": True,
        "false": False,
        "null": None,
        "list": [1, 2.5, "three", None, False, [4]],
        "empty_list": [],
        "nested": {"a": {"b": {"c": 1, "d": [{"e": 2.0}]}}},
        "empty_map": {},
        "tuple": (1, 2),
    }
    registered = await reg.register("typed", metadata)
    expected = {**metadata, "tuple": [1, 2]}
    for got in [registered, await reg.get("typed"), (await reg.enumerate({"int": 1}))[0]]:
        assert got.metadata == expected
        md = got.metadata
        assert type(md["int"]) is int and type(md["float"]) is float
        assert type(md["nested"]["a"]["b"]["c"]) is int and type(md["nested"]["a"]["b"]["d"][0]["e"]) is float
        assert md["true"] is True and md["false"] is False and md["null"] is None
        assert [type(v) for v in md["list"]] == [int, float, str, type(None), bool, list]

    # What JSON cannot hold is refused by the client, naming where it is; nothing is written.
    loop: list[Any] = []
    loop.append(loop)
    refused: list[tuple[dict[Any, Any], str]] = [
        ({"a": {"b": float("nan")}}, "metadata['a']['b']"),
        ({"a": [1, float("inf")]}, "metadata['a'][1]"),
        ({"big": 2**63}, "metadata['big']"),
        ({"when": datetime.now(timezone.utc)}, "metadata['when']"),
        ({"m": {1: "x"}}, "metadata['m']"),
        ({"b": b"bytes"}, "metadata['b']"),
        (nest(33), "metadata['n']['n']"),  # the client allows 32 levels
        ({"loop": loop}, "metadata['loop'][0][0]"),
    ]
    for bad, where in refused:
        with pytest.raises(InvalidArgumentError) as info:
            await reg.register("refused", bad)
        assert where in str(info.value), str(info.value)
    # Deeper than the namespace's max_metadata_depth (16 by default): the server refuses.
    assert (await reg.register("deep", nest(16))).metadata == nest(16)
    with pytest.raises(InvalidArgumentError) as info:
        await reg.register("refused", nest(17))
    assert "max_metadata_depth" in str(info.value)
    with pytest.raises(KeyNotFoundError):
        await reg.get("refused")


# -- errors and lifecycle -------------------------------------------------------------


async def test_keyvalue_namespace_refuses_registry(registry_addr: str) -> None:
    async with PrismClient(registry_addr, namespace="kv") as client:
        inbox = client.registry.listen("sensor-1")
        with pytest.raises(FailedPreconditionError):
            await inbox.ready()
        with pytest.raises(FailedPreconditionError):
            await receive(inbox)
        with pytest.raises(StopAsyncIteration):
            await receive(inbox)
        with pytest.raises(FailedPreconditionError):
            await client.registry.register("sensor-1", {"type": "sensor"})
        with pytest.raises(FailedPreconditionError):
            await client.registry.multicast(None, b"x")


async def test_unknown_namespace_is_not_a_missing_identity(registry_addr: str) -> None:
    async with PrismClient(registry_addr, namespace="nope") as client:
        with pytest.raises(NamespaceNotFoundError):
            await client.registry.get("sensor-1")
        with pytest.raises(NamespaceNotFoundError):
            await client.registry.heartbeat("sensor-1")
        with pytest.raises(NamespaceNotFoundError):
            await client.registry.listen("sensor-1").ready()


async def test_bad_listen_options_fail_fast(registry_client: PrismClient) -> None:
    with pytest.raises(InvalidArgumentError):
        registry_client.registry.listen("sensor-1", buffer=-1)
    with pytest.raises(InvalidArgumentError):
        registry_client.registry.listen("sensor-1", buffer=True)
    bad = registry_client.registry.listen("")
    with pytest.raises(InvalidArgumentError):
        await bad.ready()


async def test_client_close_ends_open_inboxes(registry_addr: str) -> None:
    client = PrismClient(registry_addr)
    inboxes = [client.registry.listen(f"device-{i}") for i in range(3)]
    await inboxes[0].ready()
    await client.close()
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("prism-listen") and not t.done()]
    assert leftover == []
    for inbox in inboxes:
        assert inbox.closed
        with pytest.raises(StopAsyncIteration):
            await receive(inbox)


@pytest.fixture
def jetstream_only(registry_backends: tuple[str, str]) -> None:
    """Skips a test before its server starts unless multicasts go over JetStream."""
    if registry_backends[1] != "jetstream":
        pytest.skip("needs an at-least-once broker (NATS JetStream) on the messaging slot")


async def test_jetstream_inbox_keeps_what_was_sent_while_away(jetstream_only: None, registry_client: PrismClient) -> None:
    reg = registry_client.registry
    await reg.register("roaming", {"type": "phone"})
    inbox = reg.listen("roaming")
    await reg.multicast({"type": "phone"}, b"while-here")
    assert (await receive(inbox)).payload == b"while-here"
    await inbox.aclose()

    result = await reg.multicast({"type": "phone"}, b"while-away")
    assert (result.target_count, result.delivered_count) == (1, 1)

    again = reg.listen("roaming")
    assert (await receive(again)).payload == b"while-away"
    await assert_quiet(again, 0.2)
    await again.aclose()


# -- the IoT example ----------------------------------------------------------------


async def test_iot_example_demo(registry_addr: str) -> None:
    iot = REPO / "examples" / "iot" / "iot.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(iot),
        "--demo",
        "--address",
        registry_addr,
        "--namespace",
        "default",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 25)
    out = stdout.decode()
    assert proc.returncode == 0, f"iot.py --demo exited {proc.returncode}\n{out}\n{stderr.decode()}"
    lines = out.splitlines()
    assert '[sensor-1] received {"command":"read"}' in lines
    assert '[actuator-1] received {"command":"open","valve":3}' in lines
    assert '[sensor-2] received {"command":"calibrate"}' in lines
    assert "[controller] sensor-2 expired" in lines
    # After sensor-2 expired, a multicast to the sensors targets sensor-1 alone.
    after = lines[lines.index("[controller] sensor-2 expired") + 1 :]
    assert any(line.startswith("[controller] multicast") and "1 target(s), 1 delivered" in line for line in after)
    assert lines[-1] == "demo: done"
