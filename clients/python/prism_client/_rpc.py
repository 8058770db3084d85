"""Calling the generated stubs: unary calls with their errors mapped, and the
server streams behind `pubsub.subscribe()` and `registry.listen()`.

A `ServerStream` starts its gRPC stream in a background task the moment it is
created. The stream's first frame confirms it is live on the server; the
`StreamSet` of the API object that started it remembers streams not yet
confirmed, so that a send on the same client (publish, multicast) can wait
for them first and reach them, always.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar

import grpc

from ._pb import pubsub_pb2
from .errors import PrismError, from_rpc_error

Metadata = tuple[tuple[str, str], ...]

# Items a stream holds client-side before it stops reading. Kept small so
# that a consumer that falls behind pushes back on the server (through gRPC
# flow control), where the namespace's slow-consumer policy applies, instead
# of growing memory here.
_LOCAL_BUFFER = 256

_ItemT = TypeVar("_ItemT")
_StreamT = TypeVar("_StreamT", bound="ServerStream[Any]")


def closed_client_error(err: grpc.aio.UsageError) -> PrismError:
    return PrismError(f"the client is closed ({err})")


async def unary(
    method: Any, request: Any, metadata: Metadata, timeout: float | None, *, key: str | None = None
) -> Any:
    """Calls a unary RPC of an (untyped) generated stub, mapping its errors;
    `key` makes NOT_FOUND a KeyNotFoundError."""
    try:
        return await method(request, metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err, key=key) from None
    except grpc.aio.UsageError as err:
        raise closed_client_error(err) from None


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
    """

    # The `event` oneof's field that confirms the stream is live.
    _CONFIRMATION: ClassVar[str]

    def __init__(
        self,
        streams: StreamSet,
        open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        *,
        what: str,
        task_name: str,
    ) -> None:
        self._streams = streams
        self._what = what  # names the stream in errors: "subscription to 't'"
        self._subscription_id: str | None = None
        self._dropped = 0
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

    async def _read(self, open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]]) -> None:
        try:
            call = open_call()
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
        except grpc.aio.AioRpcError as err:
            if not self._closed:
                self._error = from_rpc_error(err)
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

    def _settle(self) -> None:
        self._settled.set()
        self._streams.settled(self)
