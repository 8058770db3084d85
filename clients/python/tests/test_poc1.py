"""RFC-018's three POC-1 validation tests, as written there, except that the
client connects to the fixture's server instead of a fixed localhost:8980."""

import pytest

from prism_client import KeyNotFoundError, PrismClient


async def test_set_get(prism_addr: str) -> None:
    client = PrismClient(prism_addr)
    await client.keyvalue.set("test-key", b"test-value")
    value = await client.keyvalue.get("test-key")
    assert value == b"test-value"
    await client.close()


async def test_delete(prism_addr: str) -> None:
    client = PrismClient(prism_addr)
    await client.keyvalue.set("delete-me", b"data")
    await client.keyvalue.delete("delete-me")

    with pytest.raises(KeyNotFoundError):
        await client.keyvalue.get("delete-me")
    await client.close()


async def test_scan(prism_addr: str) -> None:
    client = PrismClient(prism_addr)
    await client.keyvalue.set("user:1", b"alice")
    await client.keyvalue.set("user:2", b"bob")
    await client.keyvalue.set("post:1", b"hello")

    keys = await client.keyvalue.scan("user:")
    assert len(keys) == 2
    assert "user:1" in keys
    assert "user:2" in keys
    await client.close()
