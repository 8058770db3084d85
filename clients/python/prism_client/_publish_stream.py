"""The `PublishStream` call behind `pubsub.publish()` when several publishes
are in flight: their requests share one stream, written without waiting for
each other's answers, and the server answers them in the order written.

Each request is published all or none and answered on its own, so one bad
message fails only its own `publish`. When the stream ends (server shutdown,
a broken connection) the publishes still waiting fail with that error and the
next publish opens a new stream. When it ends because its token expired and
the client's credentials can give a fresh one, the publishes still waiting
are sent again on a new stream: the server ends a stream only between
requests, so it published none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

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


def _answer_error(error: pb.PublishError) -> PrismError:
    """The PrismError a unary publish would have raised for this answer."""
    code = _BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
    return from_status(code, error.message or code.name)


class PublishStream:
    """One open PublishStream call of a PubSub object, opened on first use."""

    def __init__(self, stub: PubSubStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls
        self._call: _Call | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        # Writes and their place in `_pending` happen together, in order.
        self._writing = asyncio.Lock()
        self._pending: deque[tuple[int, asyncio.Future[list[str]]]] = deque()
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
            call = await self._open()
            request.sequence = self._next
            self._next += 1
            self._pending.append((request.sequence, answer))
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                # The stream ended under us: the reader fails what is pending.
                pass
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self._calls.timeout)
        except TimeoutError:
            # Its answer, should it come, has nobody to hear it.
            answer.cancel()
            raise DeadlineExceededError(
                f"the publish to {topic!r} was not answered within {self._calls.timeout}s", None
            ) from None

    async def _open(self) -> _Call:
        async with self._opening:
            if self._call is not None and self._reader is not None and not self._reader.done():
                return self._call
            metadata, token = await self._calls.metadata()
            try:
                call: _Call = self._stub.PublishStream(metadata=metadata)
            except grpc.aio.UsageError as err:
                raise closed_client_error(err) from None
            self._call = call
            self._reader = asyncio.ensure_future(self._read(call, token))
            return call

    async def _read(self, call: _Call, token: BearerToken | None) -> None:
        end: PrismError
        try:
            while True:
                read = await call.read()
                if not isinstance(read, pb.PublishStreamResponse):  # grpc.aio.EOF
                    end = UnavailableError("the server ended the publish stream", grpc.StatusCode.UNAVAILABLE)
                    break
                answer = read
                if not self._pending or self._pending[0][0] != answer.sequence:
                    end = PrismError(f"the server answered publish request {answer.sequence} out of order")
                    call.cancel()
                    break
                _, waiting = self._pending.popleft()
                if waiting.done():
                    continue
                if answer.HasField("error"):
                    waiting.set_exception(_answer_error(answer.error))
                else:
                    waiting.set_result([p.id for p in answer.published])
        except grpc.aio.AioRpcError as err:
            if self._calls.expired_stream(err, token) and self._calls.credentials is not None and token is not None:
                # The next stream asks the provider for a fresh token.
                self._calls.credentials.invalidate(token)
                end = _TokenExpired(err.details() or "the publish stream's token expired", err.code())
            else:
                end = from_rpc_error(err)
        except asyncio.CancelledError:
            end = PrismError("the client was closed")
        ended = list(self._pending)
        self._pending.clear()
        if self._call is call:
            self._call = None
        for _, waiting in ended:
            if not waiting.done():
                waiting.set_exception(end)

    async def close(self) -> None:
        """Ends the stream after the answers still due."""
        call, reader = self._call, self._reader
        if call is None or reader is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            await call.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(reader), self._calls.timeout)
        except TimeoutError:
            reader.cancel()
