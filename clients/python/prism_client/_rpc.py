"""Calling the generated stubs: unary calls with their errors mapped, and the
server streams behind `pubsub.subscribe()` and `registry.listen()`.

Every call goes through one `Calls` object per client, which computes its
metadata (namespace, and `authorization: Bearer <token>` from the client's
credentials, refreshed when near expiry) just before the call starts.

A `ServerStream` starts its gRPC stream in a background task the moment it is
created. The stream's first frame confirms it is live on the server; the
`StreamSet` of the API object that started it remembers streams not yet
confirmed, so that a send on the same client (publish, multicast) can wait
for them first and reach them, always. A stream the server ends because the
token it was opened with expired is opened again with a fresh token, when
the client has a token provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar

import grpc

from ._pb import pubsub_pb2
from .auth import BearerToken, Credentials
from .errors import PrismError, UnauthenticatedError, from_rpc_error

Metadata = tuple[tuple[str, str], ...]

NAMESPACE_METADATA = "x-prism-namespace"
AUTHORIZATION_METADATA = "authorization"

# A stream ending with UNAUTHENTICATED this close to (or after) its token's
# `exp`, by this host's clock, ended because the token expired.
_EXPIRY_SLACK = 5.0

# Items a stream holds client-side before it stops reading. Kept small so
# that a consumer that falls behind pushes back on the server (through gRPC
# flow control), where the namespace's slow-consumer policy applies, instead
# of growing memory here.
_LOCAL_BUFFER = 256

_ItemT = TypeVar("_ItemT")
_StreamT = TypeVar("_StreamT", bound="ServerStream[Any]")


def closed_client_error(err: grpc.aio.UsageError) -> PrismError:
    return PrismError(f"the client is closed ({err})")


class _Default:
    """The client's own timeout (a sentinel: None means no timeout)."""


_DEFAULT: Final = _Default()


class Calls:
    """How every call of one client is made: the metadata it carries (the
    namespace, and the bearer token of the client's credentials, asked for
    per call so that it is refreshed before it expires) and its timeout."""

    def __init__(self, namespace: str, credentials: Credentials | None, timeout: float | None) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.credentials = credentials
        self._base: Metadata = ((NAMESPACE_METADATA, namespace),)

    async def metadata(self) -> tuple[Metadata, BearerToken | None]:
        """The metadata for a call starting now, and the token in it (if any).
        Raises UnauthenticatedError (or the provider's PrismError) when no
        token can be had."""
        if self.credentials is None:
            return self._base, None
        token = await self.credentials.get()
        return self._base + ((AUTHORIZATION_METADATA, f"Bearer {token.value}"),), token

    async def unary(
        self, method: Any, request: Any, *, timeout: float | None | _Default = _DEFAULT, key: str | None = None
    ) -> Any:
        """Calls a unary RPC of an (untyped) generated stub, mapping its
        errors; `key` makes NOT_FOUND a KeyNotFoundError."""
        metadata, _ = await self.metadata()
        try:
            return await method(
                request, metadata=metadata, timeout=self.timeout if isinstance(timeout, _Default) else timeout
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, key=key) from None
        except grpc.aio.UsageError as err:
            raise closed_client_error(err) from None

    def expired_stream(self, err: grpc.aio.AioRpcError, token: BearerToken | None) -> bool:
        """Whether a live stream opened with `token` ended with `err` because
        that token expired, and a fresh one can be asked for."""
        if err.code() != grpc.StatusCode.UNAUTHENTICATED or token is None:
            return False
        if self.credentials is None or not self.credentials.refreshable:
            return False
        said_so = "has expired" in (err.details() or "")
        return said_so or self.near_expiry(token)

    def near_expiry(self, token: BearerToken) -> bool:
        """Whether `token` is this close to (or past) its `exp`, by this
        host's clock, that a stream opened with it may have ended for that."""
        return token.expires_at is not None and token.expires_at <= time.time() + _EXPIRY_SLACK


class _Wake:
    """Queued to wake a reader blocked on an empty queue when the stream ends."""


_WAKE: Final = _Wake()


class StreamSet:
    """The streams one API object (`client.pubsub`, `client.registry`) started."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        # Not yet confirmed by the server; sends wait for them.
        self._pending: set[ServerStream[Any]] = set()
        # Not yet closed, for close().
        self._open: set[ServerStream[Any]] = set()

    def add(self, stream: ServerStream[Any]) -> None:
        if not stream._settled.is_set():
            self._pending.add(stream)
        self._open.add(stream)

    def settled(self, stream: ServerStream[Any]) -> None:
        self._pending.discard(stream)

    def reopening(self, stream: ServerStream[Any]) -> None:
        """The stream is being opened again: sends wait for it once more."""
        if stream in self._open:
            self._pending.add(stream)

    def forget(self, stream: ServerStream[Any]) -> None:
        self._pending.discard(stream)
        self._open.discard(stream)

    async def await_pending(self) -> None:
        """Waits until every stream started here is confirmed (or has failed:
        its error surfaces on its own iterator). Bounded by the client's
        timeout, after which the caller goes ahead anyway."""
        if not self._pending:
            return
        waits = [asyncio.ensure_future(s._settled.wait()) for s in list(self._pending)]
        _, not_done = await asyncio.wait(waits, timeout=self._timeout)
        for w in not_done:
            w.cancel()

    async def close(self) -> None:
        """Closes every open stream."""
        streams = list(self._open)
        if streams:
            await asyncio.gather(*(s.aclose() for s in streams))


class ServerStream(Generic[_ItemT]):
    """An async iterator over the messages of one server stream whose events
    are a confirmation frame (`_CONFIRMATION`, carrying a `subscription_id`)
    followed by `MessageBatch`es (`messages`).

    Errors of the stream are raised from the iterator as `PrismError`s (once),
    and the end of the stream ends the iteration. `aclose()` (or leaving
    `async with`) ends it.

    When the server ends the live stream because the token it was opened
    with expired (UNAUTHENTICATED at the token's `exp`) and the client has a
    token provider, the stream is opened again with a fresh token and the
    iteration goes on (`reopens` counts this); any other UNAUTHENTICATED is
    raised.
    """

    # The `event` oneof's field that confirms the stream is live.
    _CONFIRMATION: ClassVar[str]

    def __init__(
        self,
        streams: StreamSet,
        calls: Calls,
        open_call: Callable[[Metadata], grpc.aio.UnaryStreamCall[Any, Any]],
        *,
        what: str,
        task_name: str,
    ) -> None:
        self._streams = streams
        self._calls = calls
        self._what = what  # names the stream in errors: "subscription to 't'"
        self._subscription_id: str | None = None
        self._dropped = 0
        self._reopens = 0
        self._queue: asyncio.Queue[_ItemT | _Wake] = asyncio.Queue(maxsize=_LOCAL_BUFFER)
        self._settled = asyncio.Event()  # confirmed by the server, or ended before that
        self._ended = False  # the stream is over (no more items will be queued)
        self._error: PrismError | None = None  # why it ended, if it failed
        self._error_raised = False
        self._closed = False  # aclose() was called
        self._call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._read(open_call), name=task_name
        )
        streams.add(self)

    # -- what a concrete stream provides ---------------------------------------

    def _item(self, message: pubsub_pb2.Message) -> _ItemT:
        """The item the iterator yields for one delivered message."""
        raise NotImplementedError

    async def _end_on_server(self) -> None:
        """Called by aclose() on a live stream before it is cancelled; may
        raise PrismError (ignored)."""

    # -- public API -----------------------------------------------------------

    @property
    def subscription_id(self) -> str | None:
        """The server's id of this stream, once it is live (else None)."""
        return self._subscription_id

    @property
    def dropped(self) -> int:
        """Total messages the server reported as dropped for this stream
        (its buffer overflowed under the drop_oldest policy)."""
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reopens(self) -> int:
        """How many times the stream was opened again with a fresh token
        after the server ended it because its token expired."""
        return self._reopens

    async def ready(self) -> None:
        """Waits until the server confirms the stream is live: a message sent
        after this returns is delivered. Raises the stream's error if it
        failed instead."""
        await self._settled.wait()
        if self._subscription_id is not None:
            return
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PrismError(f"{self._what} was closed before the server confirmed it")
        raise PrismError(f"{self._what} ended before the server confirmed it")

    async def aclose(self) -> None:
        """Ends the stream. Idempotent; never raises. Messages not yet
        consumed are discarded."""
        if self._closed:
            return
        self._closed = True
        self._streams.forget(self)
        try:
            if self._subscription_id is not None and not self._ended:
                with contextlib.suppress(PrismError):
                    await self._end_on_server()
        finally:
            if self._call is not None:
                self._call.cancel()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # (A task cancelled before it ever ran skipped _read's `finally`.)
        self._ended = True
        self._settled.set()
        # Wake any reader blocked in __anext__ on the (now unfed) queue.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_WAKE)

    def __aiter__(self: _StreamT) -> _StreamT:
        return self

    async def __anext__(self) -> _ItemT:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._queue.empty() and self._ended:
                if self._error is not None and not self._error_raised:
                    self._error_raised = True
                    raise self._error
                raise StopAsyncIteration
            item = await self._queue.get()
            if not isinstance(item, _Wake):
                if self._closed:
                    raise StopAsyncIteration
                return item

    async def __aenter__(self: _StreamT) -> _StreamT:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _state(self) -> str:
        if self._closed:
            return "closed"
        if self._ended:
            return "ended"
        return "live" if self._subscription_id else "pending"

    # -- background stream ----------------------------------------------------

    async def _read(self, open_call: Callable[[Metadata], grpc.aio.UnaryStreamCall[Any, Any]]) -> None:
        try:
            metadata, token = await self._calls.metadata()
            while True:
                try:
                    await self._stream(open_call(metadata))
                    return
                except grpc.aio.AioRpcError as err:
                    if self._closed:
                        return
                    live = self._subscription_id is not None
                    if not (live and self._calls.expired_stream(err, token)):
                        self._error = from_rpc_error(err)
                        return
                    metadata, token = await self._reopen_metadata(err, token)
        except PrismError as err:
            if not self._closed:
                self._error = err
        except grpc.aio.UsageError as err:
            if not self._closed:
                self._error = closed_client_error(err)
        except Exception as err:  # noqa: BLE001  (no foreign error may escape the client)
            if not self._closed:
                self._error = PrismError(f"{self._what} failed: {err!r}")
        finally:
            # Runs on every exit, cancellation included, without awaiting.
            self._ended = True
            self._settle()
            with contextlib.suppress(asyncio.QueueFull):
                # A reader blocks in __anext__ only on an empty queue, so when
                # the queue is full nobody needs waking.
                self._queue.put_nowait(_WAKE)

    async def _stream(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        """Reads one gRPC stream until it ends (errors propagate)."""
        self._call = call
        async for response in call:
            event = response.WhichOneof("event")
            if event == self._CONFIRMATION:
                self._subscription_id = getattr(response, event).subscription_id
                self._settle()
            elif event == "messages":
                batch = response.messages
                self._dropped += batch.dropped
                for m in batch.messages:
                    await self._queue.put(self._item(m))

    async def _reopen_metadata(
        self, err: grpc.aio.AioRpcError, old: BearerToken | None
    ) -> tuple[Metadata, BearerToken | None]:
        """The stream's token expired: until it is live again, sends on this
        client wait for it (as for a new stream). Returns the metadata with a
        fresh token; raises the stream's error if the provider has none."""
        assert old is not None and self._calls.credentials is not None
        self._subscription_id = None
        self._settled.clear()
        self._streams.reopening(self)
        self._calls.credentials.invalidate(old)
        metadata, token = await self._calls.metadata()
        fresher = (
            token is not None
            and token.value != old.value
            and (token.expires_at is None or token.expires_at > time.time())
            and (old.expires_at is None or token.expires_at is None or token.expires_at > old.expires_at)
        )
        if not fresher:
            raise UnauthenticatedError(
                f"{err.details() or 'the stream token expired'} (the token provider gave no fresher token "
                "to open it again with)",
                err.code(),
            )
        self._reopens += 1
        return metadata, token

    def _settle(self) -> None:
        self._settled.set()
        self._streams.settled(self)
