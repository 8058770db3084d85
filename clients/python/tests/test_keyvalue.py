"""DESIGN.md's KeyValue semantics through the Python client against a real server."""

from __future__ import annotations

import asyncio
import time

import pytest

from prism_client import (
    InvalidArgumentError,
    KeyNotFoundError,
    NamespaceNotFoundError,
    PrismClient,
    PrismError,
)


async def test_empty_value_is_a_value(client: PrismClient) -> None:
    await client.keyvalue.set("empty", b"")
    assert await client.keyvalue.get("empty") == b""
    assert await client.keyvalue.exists("empty") is True


async def test_binary_values_roundtrip_byte_for_byte(client: PrismClient) -> None:
    value = bytes(range(256)) + b"\x00\xff\x00"
    await client.keyvalue.set("bin", value)
    assert await client.keyvalue.get("bin") == value


async def test_ttl_expiry(client: PrismClient) -> None:
    await client.keyvalue.set("ephemeral", b"v", ttl=0.3)
    await client.keyvalue.set("durable", b"v")
    assert await client.keyvalue.exists("ephemeral")
    deadline = time.monotonic() + 3
    while await client.keyvalue.exists("ephemeral"):
        assert time.monotonic() < deadline, "key with ttl=0.3 s still exists after 3 s"
        await asyncio.sleep(0.05)
    with pytest.raises(KeyNotFoundError):
        await client.keyvalue.get("ephemeral")
    assert await client.keyvalue.scan("") == ["durable"]


async def test_overwrite_replaces_value_and_ttl(client: PrismClient) -> None:
    await client.keyvalue.set("k", b"old", ttl=0.2)
    await client.keyvalue.set("k", b"new")
    await asyncio.sleep(0.5)  # past the old TTL: the overwrite removed it
    assert await client.keyvalue.get("k") == b"new"


async def test_scan_pagination_over_thousands_of_keys(client: PrismClient) -> None:
    for start in range(0, 5000, 1000):
        await client.keyvalue.set_many({f"item:{i:05d}": b"x" for i in range(start, start + 1000)})
    await client.keyvalue.set("other:1", b"x")
    keys = await client.keyvalue.scan("item:*", page_size=333)
    assert len(keys) == 5000
    assert len(set(keys)) == 5000
    assert all(k.startswith("item:") for k in keys)


async def test_delete_of_missing_key_is_not_an_error(client: PrismClient) -> None:
    assert await client.keyvalue.delete("never-set") is False
    await client.keyvalue.set("there", b"1")
    assert await client.keyvalue.delete("there") is True


async def test_oversized_value_is_rejected_and_nothing_written(client: PrismClient) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await client.keyvalue.set("huge", b"x" * (4 * 1024 * 1024 + 1))
    assert "limit" in str(info.value)
    assert await client.keyvalue.exists("huge") is False
    with pytest.raises(KeyNotFoundError):
        await client.keyvalue.get("huge")


async def test_bad_keys_and_ttls_are_invalid_argument(client: PrismClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await client.keyvalue.set("", b"v")
    with pytest.raises(InvalidArgumentError):
        await client.keyvalue.set("k" * 5000, b"v")
    with pytest.raises(InvalidArgumentError):
        await client.keyvalue.set("k", b"v", ttl=0)
    with pytest.raises(InvalidArgumentError):
        await client.keyvalue.set("k", "not bytes")  # type: ignore[arg-type]


async def test_batch_set_is_all_or_nothing(client: PrismClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await client.keyvalue.set_many({"ok-1": b"1", "": b"2"})
    assert await client.keyvalue.get_many(["ok-1"]) == {}
    await client.keyvalue.set_many({"a": b"1", "b": b"2"})
    assert await client.keyvalue.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    assert await client.keyvalue.delete_many(["a", "b", "c"]) == 2


async def test_thousand_concurrent_requests(client: PrismClient) -> None:
    async def roundtrip(i: int) -> bytes:
        await client.keyvalue.set(f"c:{i}", str(i).encode())
        return await client.keyvalue.get(f"c:{i}")

    results = await asyncio.gather(*(roundtrip(i) for i in range(1000)))
    assert results == [str(i).encode() for i in range(1000)]


async def test_namespaces_are_isolated(prism_addr: str) -> None:
    async with PrismClient(prism_addr) as a, PrismClient(prism_addr, namespace="other") as b:
        await a.keyvalue.set("same", b"from-default")
        await b.keyvalue.set("same", b"from-other")
        assert await a.keyvalue.get("same") == b"from-default"
        assert await b.keyvalue.get("same") == b"from-other"
        await a.keyvalue.set("only-default", b"x")
        assert await b.keyvalue.exists("only-default") is False
        assert await b.keyvalue.scan("") == ["same"]


async def test_unknown_namespace_is_a_clear_error(prism_addr: str) -> None:
    async with PrismClient(prism_addr, namespace="missing") as c:
        with pytest.raises(NamespaceNotFoundError) as info:
            await c.keyvalue.get("k")
    assert "missing" in str(info.value)
    assert isinstance(info.value, PrismError)


async def test_unreachable_server_raises_prism_error() -> None:
    async with PrismClient("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(PrismError):
            await c.keyvalue.get("k")
