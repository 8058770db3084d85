"""The `PublishStream` call behind `pubsub.publish()` when several publishes
are in flight: their requests share one stream, written without waiting for
each other's answers, and the server answers them in the order written.

Each request is published all or none and answered on its own, so one bad
message fails only its own `publish`. When the stream ends (server shutdown,
a broken connection) the publishes still waiting fail with that error and the
next publish opens a new stream.

A stream carries the token it was opened with, and the server ends it at that
token's `exp`. So once the client's credentials give a fresher token (they
refresh ahead of expiry), the next publish opens a new stream with it and the
old one is half-closed: it answers what it was sent and ends cleanly. Should
a stream still end at its token's expiry (the provider was late), the
publishes it had not answered are sent again on a new stream: the server ends
a stream only between requests, so it published none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import grpc

from ._pb import pubsub_pb2 as pb
from ._pb.pubsub_pb2_grpc import PubSubStub
from ._rpc import Calls, closed_client_error
from .auth import BearerToken
from .errors import (
    DeadlineExceededError,
    PrismError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
    from_status,
)

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

_Call = grpc.aio.StreamStreamCall[pb.PublishStreamRequest, pb.PublishStreamResponse]


class _TokenExpired(UnauthenticatedError):
    """The stream ended at its token's expiry, before answering: the request
    was not published and may be sent again with a fresh token."""


# What grpc-python reports when a write fails because the server ended the
# call meanwhile: it sets this INTERNAL status itself, and the status the
# server sent is lost (grpc/grpc#34148).
_LOST_STATUS_DETAILS = "Internal error from Core"


def _answer_error(error: pb.PublishError) -> PrismError:
    """The PrismError a unary publish would have raised for this answer."""
    code = _BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
    return from_status(code, error.message or code.name)


@dataclass(eq=False)
class _Stream:
    """One PublishStream call and the requests it has not yet answered."""

    call: _Call
    token: BearerToken | None
    pending: deque[tuple[int, asyncio.Future[list[str]]]] = field(default_factory=deque)
    reader: asyncio.Task[None] | None = None
    # A write failed: the call ended while the client was writing to it.
    write_failed: bool = False

    @property
    def live(self) -> bool:
        return self.reader is not None and not self.reader.done()


class PublishStream:
    """The PublishStream calls of a PubSub object: one open for new
    publishes (opened on first use), and those half-closed when a fresher
    token opened a new one, until they have answered."""

    def __init__(self, stub: PubSubStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls
        self._current: _Stream | None = None
        self._retired: set[_Stream] = set()
        # Writes and their place in a stream's `pending` happen together, in order.
        self._writing = asyncio.Lock()
        # Request sequence numbers, increasing across the streams.
        self._next = 1

    async def publish(self, topic: str, messages: list[pb.BatchMessage]) -> list[str]:
        """Publishes one request on the stream; its message ids once answered."""
        try:
            return await self._publish_once(topic, messages)
        except _TokenExpired:
            # Once: a stream opened with the fresh token that ends at once
            # again has no fresher token to be had.
            try:
                return await self._publish_once(topic, messages)
            except _TokenExpired as err:
                raise UnauthenticatedError(err.message, err.code) from None

    async def _publish_once(self, topic: str, messages: list[pb.BatchMessage]) -> list[str]:
        request = pb.PublishStreamRequest(topic=topic, messages=messages)
        answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        async with self._writing:
            stream = await self._open()
            request.sequence = self._next
            self._next += 1
            stream.pending.append((request.sequence, answer))
            try:
                await stream.call.write(request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                # The stream ended under us: the reader fails what is pending.
                stream.write_failed = True
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self._calls.timeout)
        except TimeoutError:
            # Its answer, should it come, has nobody to hear it.
            answer.cancel()
            raise DeadlineExceededError(
                f"the publish to {topic!r} was not answered within {self._calls.timeout}s", None
            ) from None

    async def _open(self) -> _Stream:
        """The stream to write to (called under `_writing`)."""
        current = self._current
        if current is not None and not current.live:
            current = None
        credentials = self._calls.credentials
        if current is not None and (credentials is None or not credentials.refreshable):
            return current
        try:
            metadata, token = await self._calls.metadata()
        except PrismError:
            if current is None:
                raise
            # The provider failed to refresh: the stream's token is still
            # good until its `exp`, and the server says when it is not.
            return current
        if current is not None:
            if token is None or current.token is None or token.value == current.token.value:
                return current
            # A fresher token: new publishes go to a stream opened with it,
            # before the server ends this one at its token's expiry.
            await self._retire(current)
        try:
            call: _Call = self._stub.PublishStream(metadata=metadata)
        except grpc.aio.UsageError as err:
            raise closed_client_error(err) from None
        stream = _Stream(call, token)
        stream.reader = asyncio.ensure_future(self._read(stream))
        self._current = stream
        return stream

    async def _retire(self, stream: _Stream) -> None:
        """Half-closes `stream`: the server answers what it was sent, then ends it."""
        self._retired.add(stream)
        if self._current is stream:
            self._current = None
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            await stream.call.done_writing()

    async def _read(self, stream: _Stream) -> None:
        call, pending = stream.call, stream.pending
        end: PrismError
        try:
            while True:
                read = await call.read()
                if not isinstance(read, pb.PublishStreamResponse):  # grpc.aio.EOF
                    end = UnavailableError("the server ended the publish stream", grpc.StatusCode.UNAVAILABLE)
                    break
                answer = read
                if not pending or pending[0][0] != answer.sequence:
                    end = PrismError(f"the server answered publish request {answer.sequence} out of order")
                    call.cancel()
                    break
                _, waiting = pending.popleft()
                if waiting.done():
                    continue
                if answer.HasField("error"):
                    waiting.set_exception(_answer_error(answer.error))
                else:
                    waiting.set_result([p.id for p in answer.published])
        except grpc.aio.AioRpcError as err:
            end = self._ended_with(stream, err)
        except asyncio.CancelledError:
            end = PrismError("the client was closed")
        ended = list(pending)
        pending.clear()
        if self._current is stream:
            self._current = None
        self._retired.discard(stream)
        for _, waiting in ended:
            if not waiting.done():
                waiting.set_exception(end)

    def _ended_with(self, stream: _Stream, err: grpc.aio.AioRpcError) -> PrismError:
        """The error for the publishes `stream` had not answered when it ended with `err`."""
        token = stream.token
        credentials = self._calls.credentials
        lost = (
            stream.write_failed
            and err.code() == grpc.StatusCode.INTERNAL
            and err.details() == _LOST_STATUS_DETAILS
        )
        if credentials is not None and token is not None:
            expired = self._calls.expired_stream(err, token) or (lost and self._calls.near_expiry(token))
            if expired:
                # The next stream asks the provider for a fresh token.
                credentials.invalidate(token)
                said = "the publish stream's token expired" if lost else err.details()
                return _TokenExpired(said or "the publish stream's token expired", grpc.StatusCode.UNAUTHENTICATED)
        if lost:
            # The server ended the call while a publish was being written
            # and the client lost its status; the server ends a stream only
            # between requests, so the unanswered ones were not published.
            return UnavailableError(
                "the server ended the publish stream while a publish was being sent (its status was lost "
                "by the gRPC client); the unanswered publishes were not published and may be sent again",
                grpc.StatusCode.UNAVAILABLE,
            )
        return from_rpc_error(err)

    async def close(self) -> None:
        """Ends the streams after the answers still due."""
        streams = list(self._retired)
        if self._current is not None:
            streams.append(self._current)
        for stream in streams:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await stream.call.done_writing()
        readers = [s.reader for s in streams if s.reader is not None]
        if not readers:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*readers)), self._calls.timeout)
        except TimeoutError:
            for reader in readers:
                reader.cancel()
