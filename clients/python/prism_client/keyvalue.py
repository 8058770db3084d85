"""The KeyValue API of a PrismClient (`client.keyvalue`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from ._pb import keyvalue_pb2 as pb
from ._pb.keyvalue_pb2_grpc import KeyValueStub
from ._rpc import Calls
from .errors import InvalidArgumentError


def _ttl_ms(ttl: float | None) -> int | None:
    """Seconds (float ok) to whole milliseconds, rounding up so a TTL never shortens."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or math.isnan(ttl) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _check_value(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")
    return bytes(value)


class KeyValue:
    """Key-value operations on one namespace."""

    def __init__(self, stub: KeyValueStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls

    async def get(self, key: str) -> bytes:
        """The value of `key`; raises KeyNotFoundError if it is absent or expired."""
        reply = await self._calls.unary(self._stub.Get, pb.GetRequest(key=key), key=key)
        value: bytes = reply.value
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Writes `value`, replacing any previous value and TTL; `ttl` in seconds."""
        request = pb.SetRequest(key=key, value=_check_value(value))
        ttl_ms = _ttl_ms(ttl)
        if ttl_ms is not None:
            request.ttl_ms = ttl_ms
        await self._calls.unary(self._stub.Set, request)

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed. A missing key is not an error."""
        reply = await self._calls.unary(self._stub.Delete, pb.DeleteRequest(key=key))
        existed: bool = reply.existed
        return existed

    async def exists(self, key: str) -> bool:
        reply = await self._calls.unary(self._stub.Exists, pb.ExistsRequest(key=key))
        exists: bool = reply.exists
        return exists

    async def scan_page(self, prefix: str, cursor: str = "", limit: int = 0) -> tuple[list[str], str]:
        """One page of keys starting with `prefix`, and the cursor of the next ("" when done)."""
        request = pb.ScanRequest(prefix=prefix, cursor=cursor, limit=limit)
        reply = await self._calls.unary(self._stub.Scan, request)
        return list(reply.keys), reply.next_cursor

    async def scan(self, prefix: str = "", page_size: int = 0) -> list[str]:
        """Every live key starting with `prefix`, following all pages. `"user:*"` means `"user:"`."""
        keys: list[str] = []
        cursor = ""
        while True:
            page, cursor = await self.scan_page(prefix, cursor, page_size)
            keys.extend(page)
            if not cursor:
                return keys

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the keys that exist, in one round trip."""
        reply = await self._calls.unary(self._stub.BatchGet, pb.BatchGetRequest(keys=list(keys)))
        return {item.key: item.value for item in reply.items if item.found}

    async def set_many(self, entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        """Writes every entry or none: one bad entry rejects the whole batch."""
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        ttl_ms = _ttl_ms(ttl)
        requests = []
        for key, value in pairs:
            request = pb.SetRequest(key=key, value=_check_value(value))
            if ttl_ms is not None:
                request.ttl_ms = ttl_ms
            requests.append(request)
        await self._calls.unary(self._stub.BatchSet, pb.BatchSetRequest(entries=requests))

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Removes the keys; returns how many existed."""
        reply = await self._calls.unary(self._stub.BatchDelete, pb.BatchDeleteRequest(keys=list(keys)))
        deleted: int = reply.deleted
        return deleted
