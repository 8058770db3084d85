"""The Multicast Registry API of a PrismClient (`client.registry`).

Identities register with JSON-like metadata and an optional TTL, are
enumerated by filter, and receive what is multicast to them in their inbox
(`listen()`). Metadata and filters travel as typed `Value`s: integers and
floats stay distinct, so `{"floor": 1}` comes back as the int 1 and
`{"ratio": 1.0}` as the float 1.0.

`listen()` returns an `Inbox` at once and starts its stream in the
background; `multicast()` on the same client first waits until the server
has confirmed every inbox the client opened, so

    inbox = client.registry.listen("sensor-1")
    await client.registry.multicast({"type": "sensor"}, {"command": "read"})

delivers the command to `inbox`, always.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ._pb import pubsub_pb2
from ._pb import registry_pb2 as pb
from ._pb.registry_pb2_grpc import RegistryStub
from ._rpc import Calls, ServerStream, StreamSet
from .errors import InvalidArgumentError
from .keyvalue import _ttl_ms
from .pubsub import _check_str_map

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- metadata and filters: Python values <-> prism.v1.Value ---------------------


# Containers (maps and lists) metadata or a filter may nest, counting the
# top-level map as 1: above what a pattern would allow (the built-in one
# allows 16 by default) and the most protobuf's Python runtime still decodes
# in a response (33; each level is two messages), so that deep or
# self-containing values fail here, clearly.
_MAX_DEPTH = 32

# A MapValue's (or a request's filter) `fields`: indexing a new key adds an empty Value.
_ValueFields = MutableMapping[str, pb.Value]


def _fill_value(target: pb.Value, value: Any, path: str, depth: int) -> None:
    """Writes `value` into `target` as a typed Value (in place: nested
    messages are not copied); `path` names it in errors (`metadata['a'][0]`)."""
    # bool before int: True is an int to Python, a bool to the registry.
    if value is None:
        target.null_value = pb.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidArgumentError(f"{path} = {value} does not fit in a 64-bit signed integer")
        target.int_value = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{path} = {value!r} is not a finite number (JSON has no NaN or infinity)")
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, Mapping):
        target.map_value.SetInParent()  # an empty map is a map
        _fill_fields(target.map_value.fields, value, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        _check_depth(path, depth + 1)
        target.list_value.SetInParent()
        for i, item in enumerate(value):
            _fill_value(target.list_value.values.add(), item, f"{path}[{i}]", depth + 1)
    else:
        raise InvalidArgumentError(
            f"{path} has type {type(value).__name__}; metadata and filter values are None, bool, int, "
            "float, str, lists and str-keyed maps"
        )


def _fill_fields(fields: _ValueFields, mapping: Mapping[Any, Any], path: str, depth: int) -> None:
    _check_depth(path, depth)
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(f"{path} has a key {key!r} that is not a str")
        _fill_value(fields[key], value, f"{path}[{key!r}]", depth)


def _check_depth(path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidArgumentError(f"{path} nests deeper than {_MAX_DEPTH} levels (or contains itself)")


def _fill_top(fields: _ValueFields, mapping: Mapping[str, Any] | None, what: str) -> None:
    """Writes the `metadata` or `filter` argument (None: empty) into `fields`."""
    if mapping is None:
        return
    if not isinstance(mapping, Mapping):
        raise InvalidArgumentError(f"{what} must be a mapping with str keys, got {type(mapping).__name__}")
    _fill_fields(fields, mapping, what, 1)


def _from_value(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [_from_value(v) for v in value.list_value.values]
    if kind == "map_value":
        return _from_map(value.map_value)
    return None  # null_value, or no kind at all


def _from_map(mapping: pb.MapValue) -> dict[str, Any]:
    return {key: _from_value(v) for key, v in mapping.fields.items()}


def _check_identity(identity: str) -> str:
    if not isinstance(identity, str):
        raise InvalidArgumentError(f"identity must be a str, got {type(identity).__name__}")
    return identity


# -- results --------------------------------------------------------------------


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True)
class Identity:
    """A registered identity as the server holds it."""

    identity: str
    metadata: dict[str, Any] = field(hash=False)
    registered_at: datetime  # UTC
    expires_at: datetime | None  # UTC; None: never expires
    ttl: float | None = None  # seconds a heartbeat renews to; None without a TTL

    @classmethod
    def _from_pb(cls, record: pb.Identity) -> Identity:
        return cls(
            identity=record.identity,
            metadata=_from_map(record.metadata),
            registered_at=_from_ms(record.registered_at_ms),
            expires_at=_from_ms(record.expires_at_ms) if record.HasField("expires_at_ms") else None,
            ttl=record.ttl_ms / 1000 if record.HasField("ttl_ms") else None,
        )


@dataclass(frozen=True)
class MulticastResult:
    target_count: int  # identities the filter matched when the multicast ran
    delivered_count: int  # messages the messaging backend accepted for them
    failed: dict[str, str] = field(hash=False)  # identity -> why its message was not accepted


@dataclass(frozen=True)
class InboxMessage:
    """One message multicast to an identity."""

    id: str
    payload: bytes
    metadata: dict[str, str] = field(hash=False)
    timestamp_ms: int

    def json(self) -> Any:
        """The payload decoded as JSON (what `multicast(message=<not bytes>)` sends);
        raises ValueError if it is not JSON."""
        return json.loads(self.payload)


# -- the inbox ------------------------------------------------------------------


class Inbox(ServerStream[InboxMessage]):
    """An identity's inbox: an async iterator of the `InboxMessage`s
    multicast to it.

    The stream starts as soon as `Registry.listen()` returns; `await
    inbox.ready()` waits until it is live. Errors of the stream are raised
    from the iterator as `PrismError`s, and the end of the stream ends the
    iteration. `aclose()` (or leaving `async with`) stops listening.
    """

    _CONFIRMATION = "listening"

    def __init__(self, registry: Registry, request: pb.ListenRequest) -> None:
        self.identity: str = request.identity
        super().__init__(
            registry._streams,
            registry._calls,
            # Long-lived: not bounded by the client's unary timeout.
            lambda metadata: registry._stub.Listen(request, metadata=metadata, timeout=None),
            what=f"inbox of '{request.identity}'",
            task_name=f"prism-listen-{request.identity}",
        )

    def __repr__(self) -> str:
        return f"<Inbox identity={self.identity!r} id={self._subscription_id!r} {self._state()}>"

    def _item(self, m: pubsub_pb2.Message) -> InboxMessage:
        return InboxMessage(id=m.id, payload=m.payload, metadata=dict(m.metadata), timestamp_ms=m.timestamp_ms)


# -- the API --------------------------------------------------------------------


class Registry:
    """Multicast Registry operations on one namespace.

    Filters are maps whose conditions must all hold: `{"type": "sensor"}`
    (type-aware equality), `{"floor.gte": 2}` (operators `eq ne lt lte gt gte
    startswith endswith contains in exists regex type`), dotted paths into
    nested maps, `"$and"`/`"$or"` lists and `"$not"`. None or `{}` selects
    every identity. A malformed filter raises InvalidArgumentError naming
    the offending key.
    """

    def __init__(self, stub: RegistryStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls
        # Inboxes this client opened; multicast waits for the unconfirmed ones.
        self._streams = StreamSet(calls.timeout)

    async def register(
        self,
        identity: str,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        replace: bool = True,
    ) -> Identity:
        """Registers `identity` with `metadata` (JSON-like) and a TTL in
        seconds (None: the namespace's default, which is no expiry unless
        configured). Re-registering replaces metadata and TTL; with
        `replace=False` an identity already registered raises
        AlreadyExistsError."""
        request = pb.RegisterRequest(identity=_check_identity(identity), replace=bool(replace))
        request.metadata.SetInParent()
        _fill_top(request.metadata.fields, metadata, "metadata")
        ttl_ms = _ttl_ms(ttl)
        if ttl_ms is not None:
            request.ttl_ms = ttl_ms
        reply = await self._unary(self._stub.Register, request)
        return Identity._from_pb(reply.identity)

    async def heartbeat(self, identity: str) -> Identity:
        """Renews the identity's TTL from now; KeyNotFoundError if it is not
        registered (or has expired)."""
        request = pb.HeartbeatRequest(identity=_check_identity(identity))
        reply = await self._unary(self._stub.Heartbeat, request, key=identity)
        return Identity._from_pb(reply.identity)

    async def unregister(self, identity: str) -> bool:
        """Removes the identity; returns whether it was registered. Idempotent."""
        request = pb.UnregisterRequest(identity=_check_identity(identity))
        reply = await self._unary(self._stub.Unregister, request)
        existed: bool = reply.existed
        return existed

    async def get(self, identity: str) -> Identity:
        """The identity's record; KeyNotFoundError if it is not registered (or has expired)."""
        request = pb.GetIdentityRequest(identity=_check_identity(identity))
        reply = await self._unary(self._stub.Get, request, key=identity)
        return Identity._from_pb(reply.identity)

    async def enumerate_page(
        self,
        filter: Mapping[str, Any] | None = None,  # noqa: A002  (the API's name)
        cursor: str = "",
        limit: int = 0,
    ) -> tuple[list[Identity], str]:
        """One page of the identities `filter` matches, in identity order, and
        the cursor of the next page ("" when done). `limit` 0: the
        namespace's default page size."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**32:
            raise InvalidArgumentError(f"limit must be a non-negative number of identities, got {limit!r}")
        if not isinstance(cursor, str):
            raise InvalidArgumentError(f"cursor must be a str, got {type(cursor).__name__}")
        request = pb.EnumerateRequest(cursor=cursor, limit=limit)
        _fill_top(request.filter, filter, "filter")
        reply = await self._unary(self._stub.Enumerate, request)
        return [Identity._from_pb(i) for i in reply.identities], reply.next_cursor

    async def enumerate(
        self,
        filter: Mapping[str, Any] | None = None,  # noqa: A002  (the API's name)
    ) -> list[Identity]:
        """Every identity `filter` matches (following all pages), in identity order."""
        request = pb.EnumerateRequest()
        _fill_top(request.filter, filter, "filter")
        identities: list[Identity] = []
        while True:
            reply = await self._unary(self._stub.Enumerate, request)
            identities.extend(Identity._from_pb(i) for i in reply.identities)
            if not reply.next_cursor:
                return identities
            request.cursor = reply.next_cursor

    async def multicast(
        self,
        filter: Mapping[str, Any] | None = None,  # noqa: A002  (the API's name)
        message: Any = b"",
        metadata: Mapping[str, str] | None = None,
    ) -> MulticastResult:
        """Sends `message` to the inbox of every identity `filter` matches.

        `message` is bytes (sent as they are) or anything `json.dumps` takes
        (sent as UTF-8 JSON with metadata `content-type: application/json`).
        `metadata` (str to str) travels with the message. Every inbox this
        client opened with `listen()` is live before the message is sent.
        """
        headers = _check_str_map(metadata, "metadata")
        if isinstance(message, (bytes, bytearray, memoryview)):
            payload = bytes(message)
        else:
            try:
                payload = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
            except (TypeError, ValueError) as err:
                raise InvalidArgumentError(f"message must be bytes or JSON-serialisable: {err}") from None
            headers = {"content-type": "application/json", **headers}
        request = pb.MulticastRequest(payload=payload, metadata=headers)
        _fill_top(request.filter, filter, "filter")
        await self._streams.await_pending()
        reply = await self._unary(self._stub.Multicast, request)
        return MulticastResult(
            target_count=reply.target_count, delivered_count=reply.delivered_count, failed=dict(reply.failed)
        )

    def listen(self, identity: str, buffer: int = 0) -> Inbox:
        """Opens `identity`'s inbox; returns at once (call it inside a running
        event loop). It is live once `await inbox.ready()` returns, and before
        any later `multicast` on this client is sent. `buffer`: messages the
        server buffers for this listener (0: the namespace's default)."""
        if isinstance(buffer, bool) or not isinstance(buffer, int) or not 0 <= buffer < 2**32:
            raise InvalidArgumentError(f"buffer must be a non-negative number of messages, got {buffer!r}")
        return Inbox(self, pb.ListenRequest(identity=_check_identity(identity), buffer=buffer))

    async def close(self) -> None:
        """Closes every open inbox of this client."""
        await self._streams.close()

    async def _unary(self, method: Any, request: Any, *, key: str | None = None) -> Any:
        return await self._calls.unary(method, request, key=key)
