"""The PubSub API of a PrismClient (`client.pubsub`).

`subscribe()` returns a `Subscription` at once and starts its gRPC stream in a
background task. The client remembers subscriptions the server has not yet
confirmed, and `publish()` on the same client first waits for those
confirmations, so

    subs = [client.pubsub.subscribe("t") for _ in range(3)]
    await client.pubsub.publish("t", b"x")

delivers the message to all three subscriptions, always.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

import grpc

from ._pb import pubsub_pb2 as pb
from ._pb.pubsub_pb2_grpc import PubSubStub
from .errors import InvalidArgumentError, PrismError, from_rpc_error

SlowConsumer = Literal["drop_oldest", "disconnect"]

_SLOW_CONSUMER: Final[dict[str, pb.SlowConsumerPolicy]] = {
    "drop_oldest": pb.SLOW_CONSUMER_POLICY_DROP_OLDEST,
    "disconnect": pb.SLOW_CONSUMER_POLICY_DISCONNECT,
}

# Messages a subscription holds client-side before it stops reading its
# stream. Kept small so that a consumer that falls behind pushes back on the
# server (through gRPC flow control), where the namespace's slow-consumer
# policy applies, instead of growing memory here.
_LOCAL_BUFFER = 256

# Upper bound of the Unsubscribe call `aclose()` makes before cancelling.
_UNSUBSCRIBE_TIMEOUT = 5.0

_Metadata = tuple[tuple[str, str], ...]


def _closed_client_error(err: grpc.aio.UsageError) -> PrismError:
    return PrismError(f"the client is closed ({err})")


@dataclass(frozen=True)
class Message:
    """One delivered message. `await message.ack()` acknowledges it on its
    subscription (needed with `manual_ack=True` on at-least-once brokers)."""

    id: str
    topic: str
    payload: bytes
    metadata: dict[str, str] = field(hash=False)
    timestamp_ms: int
    # 1 on first delivery; more when an at-least-once broker redelivers.
    delivery_attempt: int
    _subscription: Subscription | None = field(default=None, repr=False, compare=False, hash=False)

    async def ack(self) -> int:
        """Acknowledges this message on the subscription that delivered it;
        returns 1 if the broker was waiting for that ack (at-least-once
        brokers such as JetStream), else 0."""
        if self._subscription is None:
            raise InvalidArgumentError("this message was not delivered by a subscription; nothing to ack")
        return await self._subscription.ack(self)


def _check_payload(payload: bytes) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"payload must be bytes, got {type(payload).__name__}")
    return bytes(payload)


def _check_str_map(value: Mapping[str, str] | None, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{what} must be a mapping of str to str, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgumentError(f"{what} must map str to str, got {k!r}: {v!r}")
    return dict(value)


class _Wake:
    """Queued to wake a reader blocked on an empty queue when the stream ends."""


_WAKE: Final = _Wake()


class Subscription:
    """A live subscription: an async iterator of `Message`s.

    The stream starts as soon as `PubSub.subscribe()` returns. Iterate it with
    `async for` or `anext(sub)`; errors of the stream (bad topic, wrong
    namespace, disconnected as a slow consumer, ...) are raised from there as
    `PrismError`s, and the end of the stream ends the iteration. `aclose()`
    (or leaving `async with`) unsubscribes.
    """

    def __init__(self, pubsub: PubSub, request: pb.SubscribeRequest) -> None:
        self._pubsub = pubsub
        self.topic: str = request.topic
        self.manual_ack: bool = request.manual_ack
        self._subscription_id: str | None = None
        self._dropped = 0
        self._queue: asyncio.Queue[Message | _Wake] = asyncio.Queue(maxsize=_LOCAL_BUFFER)
        self._settled = asyncio.Event()  # confirmed by the server, or ended before that
        self._ended = False  # the stream is over (no more items will be queued)
        self._error: PrismError | None = None  # why it ended, if it failed
        self._error_raised = False
        self._closed = False  # aclose() was called
        self._call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse] | None = None
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._read(request), name=f"prism-subscribe-{request.topic}"
        )

    # -- public API -----------------------------------------------------------

    @property
    def subscription_id(self) -> str | None:
        """The server's id of this subscription, once it is live (else None)."""
        return self._subscription_id

    @property
    def dropped(self) -> int:
        """Total messages the server reported as dropped for this subscriber
        (its buffer overflowed under the drop_oldest policy)."""
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    async def ready(self) -> None:
        """Waits until the server confirms the subscription is live: a message
        published after this returns is delivered. Raises the subscription's
        error if it failed instead."""
        await self._settled.wait()
        if self._subscription_id is not None:
            return
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PrismError(f"subscription to '{self.topic}' was closed before the server confirmed it")
        raise PrismError(f"subscription to '{self.topic}' ended before the server confirmed it")

    async def ack(self, *messages: Message | str) -> int:
        """Acknowledges messages (or message ids) of this subscription; returns
        how many were pending on it."""
        ids = [m.id if isinstance(m, Message) else m for m in messages]
        for message_id in ids:
            if not isinstance(message_id, str):
                raise InvalidArgumentError(f"ack takes Messages or message ids, got {type(message_id).__name__}")
        if not ids:
            return 0
        await self.ready()
        assert self._subscription_id is not None
        return await self._pubsub._ack(self._subscription_id, ids)

    async def aclose(self) -> None:
        """Unsubscribes and stops the background stream. Idempotent; never
        raises. Messages not yet consumed are discarded."""
        if self._closed:
            return
        self._closed = True
        self._pubsub._forget(self)
        try:
            if self._subscription_id is not None and not self._ended:
                # Ends the subscription on the server before we return, so that
                # a publish after aclose() is never routed to this subscriber.
                with contextlib.suppress(PrismError):
                    await self._pubsub._unsubscribe(self._subscription_id, _UNSUBSCRIBE_TIMEOUT)
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

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._queue.empty() and self._ended:
                if self._error is not None and not self._error_raised:
                    self._error_raised = True
                    raise self._error
                raise StopAsyncIteration
            item = await self._queue.get()
            if isinstance(item, Message):
                if self._closed:
                    raise StopAsyncIteration
                return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ended" if self._ended else "live" if self._subscription_id else "pending"
        return f"<Subscription topic={self.topic!r} id={self._subscription_id!r} {state}>"

    # -- background stream ----------------------------------------------------

    async def _read(self, request: pb.SubscribeRequest) -> None:
        try:
            # Long-lived: not bounded by the client's unary timeout.
            call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse] = self._pubsub._stub.Subscribe(
                request, metadata=self._pubsub._metadata, timeout=None
            )
            self._call = call
            async for response in call:
                event = response.WhichOneof("event")
                if event == "subscribed":
                    self._subscription_id = response.subscribed.subscription_id
                    self._settle()
                elif event == "messages":
                    batch = response.messages
                    self._dropped += batch.dropped
                    for m in batch.messages:
                        await self._queue.put(
                            Message(
                                id=m.id,
                                topic=m.topic,
                                payload=m.payload,
                                metadata=dict(m.metadata),
                                timestamp_ms=m.timestamp_ms,
                                delivery_attempt=m.delivery_attempt,
                                _subscription=self,
                            )
                        )
        except grpc.aio.AioRpcError as err:
            if not self._closed:
                self._error = from_rpc_error(err)
        except grpc.aio.UsageError as err:
            if not self._closed:
                self._error = _closed_client_error(err)
        except Exception as err:  # noqa: BLE001  (no foreign error may escape the client)
            if not self._closed:
                self._error = PrismError(f"subscription to '{self.topic}' failed: {err!r}")
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
        self._pubsub._pending.discard(self)


class PubSub:
    """Publish/subscribe on one namespace."""

    def __init__(self, stub: PubSubStub, metadata: _Metadata, timeout: float | None) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        # Subscriptions not yet confirmed by the server; publish waits for them.
        self._pending: set[Subscription] = set()
        # Every subscription not yet closed, for close().
        self._open: set[Subscription] = set()

    async def publish(self, topic: str, payload: bytes, metadata: Mapping[str, str] | None = None) -> str:
        """Publishes one message; returns its id once the broker accepted it."""
        request = pb.PublishRequest(
            topic=topic, payload=_check_payload(payload), metadata=_check_str_map(metadata, "metadata")
        )
        await self._await_pending()
        reply = await self._unary(self._stub.Publish, request, self._timeout)
        message_id: str = reply.id
        return message_id

    async def publish_many(
        self, topic: str, payloads: Sequence[bytes | tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Publishes messages to one topic, in order, all or none (every one is
        validated first); returns their ids in order. An item is a payload or
        a `(payload, metadata)` pair."""
        messages = []
        for item in payloads:
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise InvalidArgumentError("publish_many items are payloads or (payload, metadata) pairs")
                payload, metadata = item
            else:
                payload, metadata = item, None
            messages.append(
                pb.BatchMessage(payload=_check_payload(payload), metadata=_check_str_map(metadata, "metadata"))
            )
        if not messages:
            return []
        await self._await_pending()
        request = pb.PublishBatchRequest(topic=topic, messages=messages)
        reply = await self._unary(self._stub.PublishBatch, request, self._timeout)
        return [p.id for p in reply.published]

    def subscribe(
        self,
        topic: str,
        *,
        group: str | None = None,
        manual_ack: bool = False,
        buffer: int = 0,
        slow_consumer: SlowConsumer | None = None,
        filter: Mapping[str, str] | None = None,  # noqa: A002  (the API's name)
    ) -> Subscription:
        """Subscribes to `topic`; returns at once (call it inside a running
        event loop). The subscription is live once `await sub.ready()` returns,
        and before any later `publish` on this client is sent.

        `group`: consumer group; each message goes to one member.
        `manual_ack`: messages must be acked (`await message.ack()`).
        `buffer`: messages the server buffers for this subscriber (0: namespace default).
        `slow_consumer`: "drop_oldest" or "disconnect" when that buffer is full (None: namespace default).
        `filter`: deliver only messages whose metadata has all these pairs.
        """
        if group is not None and (not isinstance(group, str) or group == ""):
            raise InvalidArgumentError("group must be a non-empty string (or None for no group)")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or not 0 <= buffer < 2**32:
            raise InvalidArgumentError(f"buffer must be a non-negative number of messages, got {buffer!r}")
        if slow_consumer is None:
            policy = pb.SLOW_CONSUMER_POLICY_UNSPECIFIED
        elif slow_consumer in _SLOW_CONSUMER:
            policy = _SLOW_CONSUMER[slow_consumer]
        else:
            raise InvalidArgumentError(f'slow_consumer must be "drop_oldest" or "disconnect", not {slow_consumer!r}')
        request = pb.SubscribeRequest(
            topic=topic,
            group=group or "",
            manual_ack=bool(manual_ack),
            buffer=buffer,
            slow_consumer=policy,
            filter=_check_str_map(filter, "filter"),
        )
        subscription = Subscription(self, request)
        if not subscription._settled.is_set():
            self._pending.add(subscription)
        self._open.add(subscription)
        return subscription

    async def close(self) -> None:
        """Closes every open subscription of this client."""
        subscriptions = list(self._open)
        if subscriptions:
            await asyncio.gather(*(s.aclose() for s in subscriptions))

    async def unsubscribe(self, subscription_id: str) -> None:
        """Ends a subscription by its id (its iterator then finishes normally).
        For your own `Subscription`s, `aclose()` does this and more."""
        await self._unsubscribe(subscription_id, self._timeout)

    # -- internals ------------------------------------------------------------

    async def _unsubscribe(self, subscription_id: str, timeout: float | None) -> None:
        request = pb.UnsubscribeRequest(subscription_id=subscription_id)
        await self._unary(self._stub.Unsubscribe, request, timeout)

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        """Calls a unary RPC of the (untyped) generated stub, mapping its errors."""
        try:
            return await method(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        except grpc.aio.UsageError as err:
            raise _closed_client_error(err) from None

    async def _await_pending(self) -> None:
        """Waits until every subscription made on this client is confirmed (or
        has failed: its error surfaces on its own iterator). Bounded by the
        client's timeout, after which the publish goes ahead anyway."""
        if not self._pending:
            return
        waits = [asyncio.ensure_future(s._settled.wait()) for s in list(self._pending)]
        _, not_done = await asyncio.wait(waits, timeout=self._timeout)
        for w in not_done:
            w.cancel()

    def _forget(self, subscription: Subscription) -> None:
        self._pending.discard(subscription)
        self._open.discard(subscription)

    async def _ack(self, subscription_id: str, ids: list[str]) -> int:
        request = pb.AckRequest(subscription_id=subscription_id, message_ids=ids)
        reply = await self._unary(self._stub.Ack, request, self._timeout)
        acknowledged: int = reply.acknowledged
        return acknowledged
