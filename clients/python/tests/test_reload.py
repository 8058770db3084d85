"""SIGHUP reloads the config file: namespaces are added, removed and changed
on a running `prism serve` without dropping connections (one client and one
open subscription live through every reload), and a file that does not load,
or that changes what only a restart can apply, is refused with the reason in
the log while the previous config keeps serving."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from conftest import PrismProcess

from prism_client import InvalidArgumentError, KeyNotFoundError, NamespaceNotFoundError, PrismClient

BASE = """
[backends.mem]
type = "memstore"

[namespaces.events]
pattern = "pubsub"
slots = { pubsub = "mem" }
"""

KEEP = """
[namespaces.keep]
pattern = "keyvalue"
slots = { kv = "mem" }
"""

GOING = """
[namespaces.going]
pattern = "keyvalue"
slots = { kv = "mem" }
"""

ADDED = """
[namespaces.added]
pattern = "keyvalue"
slots = { kv = "mem" }
"""

# The built-in KeyValue pattern's own setting: values over 16 bytes refused.
KEEP_SMALL = KEEP + """
[namespaces.keep.settings]
max_value_bytes = 16
"""


class Server(PrismProcess):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, BASE + KEEP + GOING)

    def reload(self, text: str) -> None:
        self.config.write_text(text)
        os.kill(self.proc.pid, signal.SIGHUP)

    def wait_for_log(self, fragment: str, count: int = 1) -> str:
        deadline = time.monotonic() + 15
        while True:
            text = self.log()
            if text.count(fragment) >= count:
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"{fragment!r} never appeared {count} time(s) in the log:\n{text}")
            time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 15
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        await asyncio.sleep(0.05)


async def test_namespaces_change_without_dropping_connections(server: Server) -> None:
    async with (
        PrismClient(server.addr, namespace="keep") as keep,
        PrismClient(server.addr, namespace="going") as going,
        PrismClient(server.addr, namespace="added") as added,
        PrismClient(server.addr, namespace="events") as events,
    ):
        sub = events.pubsub.subscribe("t")
        await sub.ready()
        await keep.keyvalue.set("k", b"a value longer than sixteen bytes")
        await going.keyvalue.set("g", b"1")
        with pytest.raises(NamespaceNotFoundError):
            await added.keyvalue.set("a", b"1")

        # Add one, remove one, change one.
        server.reload(BASE + KEEP_SMALL + ADDED)
        server.wait_for_log("config reloaded")

        async def added_serves() -> bool:
            try:
                await added.keyvalue.set("a", b"1")
            except NamespaceNotFoundError:
                return False
            return True

        await eventually(added_serves, "the added namespace serves")
        assert await added.keyvalue.get("a") == b"1"
        with pytest.raises(NamespaceNotFoundError):
            await going.keyvalue.get("g")
        # The changed namespace runs with its new settings, on the same data.
        with pytest.raises(InvalidArgumentError):
            await keep.keyvalue.set("k2", b"a value longer than sixteen bytes")
        assert await keep.keyvalue.get("k") == b"a value longer than sixteen bytes"
        # The subscription on the untouched namespace lived through it.
        await events.pubsub.publish("t", b"after the reload")
        message = await asyncio.wait_for(anext(sub), 10)
        assert message.payload == b"after the reload"

        # A removed namespace added back serves again; its data was kept.
        server.reload(BASE + KEEP_SMALL + ADDED + GOING)
        server.wait_for_log("config reloaded", count=2)

        async def going_is_back() -> bool:
            try:
                return await going.keyvalue.get("g") == b"1"
            except NamespaceNotFoundError:
                return False

        await eventually(going_is_back, "the re-added namespace serves its old data")
        await sub.aclose()


async def test_a_bad_file_is_refused_and_the_old_config_keeps_serving(server: Server) -> None:
    async with PrismClient(server.addr, namespace="keep") as keep:
        await keep.keyvalue.set("k", b"v")

        server.reload(BASE + KEEP + "[namespaces.broken\n")
        log = server.wait_for_log("config reload refused")
        assert "prism.toml" in log
        assert await keep.keyvalue.get("k") == b"v"

        # A namespace that does not start: nothing of the reload is applied.
        unknown_slot = ADDED + '\n[namespaces.bad]\npattern = "keyvalue"\nslots = { kv = "nowhere" }\n'
        server.reload(BASE + unknown_slot)
        log = server.wait_for_log("config reload refused", count=2)
        assert "nowhere" in log
        assert await keep.keyvalue.get("k") == b"v"
        async with PrismClient(server.addr, namespace="added") as added:
            with pytest.raises(NamespaceNotFoundError):
                await added.keyvalue.get("a")

        # What only a restart applies is named, and nothing changes.
        server.reload(BASE.replace('type = "memstore"', 'type = "memstore"\nmax_keys = 5') + KEEP + ADDED)
        log = server.wait_for_log("config reload refused", count=3)
        assert "[backends] changed" in log
        with pytest.raises(KeyNotFoundError):
            await keep.keyvalue.get("missing")
        async with PrismClient(server.addr, namespace="added") as added:
            with pytest.raises(NamespaceNotFoundError):
                await added.keyvalue.get("a")
