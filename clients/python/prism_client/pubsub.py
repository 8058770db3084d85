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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ._pb import pubsub_pb2 as pb
from ._pb.pubsub_pb2_grpc import PubSubStub
from ._publish_stream import PublishStream
from ._rpc import Calls, ServerStream, StreamSet
from .errors import InvalidArgumentError

SlowConsumer = Literal["drop_oldest", "disconnect"]

_SLOW_CONSUMER: Final[dict[str, pb.SlowConsumerPolicy]] = {
    "drop_oldest": pb.SLOW_CONSUMER_POLICY_DROP_OLDEST,
    "disconnect": pb.SLOW_CONSUMER_POLICY_DISCONNECT,
}

# Upper bound of the Unsubscribe call `aclose()` makes before cancelling.
_UNSUBSCRIBE_TIMEOUT = 5.0


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


class Subscription(ServerStream[Message]):
    """A live subscription: an async iterator of `Message`s.

    The stream starts as soon as `PubSub.subscribe()` returns. Iterate it with
    `async for` or `anext(sub)`; errors of the stream (bad topic, wrong
    namespace, disconnected as a slow consumer, ...) are raised from there as
    `PrismError`s, and the end of the stream ends the iteration. `aclose()`
    (or leaving `async with`) unsubscribes.
    """

    _CONFIRMATION = "subscribed"

    def __init__(self, pubsub: PubSub, request: pb.SubscribeRequest) -> None:
        self._pubsub = pubsub
        self.topic: str = request.topic
        self.manual_ack: bool = request.manual_ack
        super().__init__(
            pubsub._streams,
            pubsub._calls,
            # Long-lived: not bounded by the client's unary timeout.
            lambda metadata: pubsub._stub.Subscribe(request, metadata=metadata, timeout=None),
            what=f"subscription to '{request.topic}'",
            task_name=f"prism-subscribe-{request.topic}",
        )

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

    def __repr__(self) -> str:
        return f"<Subscription topic={self.topic!r} id={self._subscription_id!r} {self._state()}>"

    def _item(self, m: pb.Message) -> Message:
        return Message(
            id=m.id,
            topic=m.topic,
            payload=m.payload,
            metadata=dict(m.metadata),
            timestamp_ms=m.timestamp_ms,
            delivery_attempt=m.delivery_attempt,
            _subscription=self,
        )

    async def _end_on_server(self) -> None:
        # Ends the subscription on the server before aclose() returns, so that
        # a publish after aclose() is never routed to this subscriber.
        assert self._subscription_id is not None
        await self._pubsub._unsubscribe(self._subscription_id, _UNSUBSCRIBE_TIMEOUT)


class PubSub:
    """Publish/subscribe on one namespace."""

    def __init__(self, stub: PubSubStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls
        # Subscriptions this client started; publish waits for the unconfirmed ones.
        self._streams = StreamSet(calls.timeout)
        # Publishes awaiting their answer; past one, they share a PublishStream.
        self._in_flight = 0
        self._publish_stream = PublishStream(stub, calls)

    async def publish(self, topic: str, payload: bytes, metadata: Mapping[str, str] | None = None) -> str:
        """Publishes one message; returns its id once the broker accepted it."""
        request = pb.PublishRequest(
            topic=topic, payload=_check_payload(payload), metadata=_check_str_map(metadata, "metadata")
        )
        await self._streams.await_pending()
        if self._in_flight == 0:
            # A lone publish: one unary call, nothing to pipeline with.
            self._in_flight += 1
            try:
                reply = await self._calls.unary(self._stub.Publish, request)
            finally:
                self._in_flight -= 1
            message_id: str = reply.id
            return message_id
        self._in_flight += 1
        try:
            message = pb.BatchMessage(payload=request.payload, metadata=request.metadata)
            (message_id,) = await self._publish_stream.publish(topic, [message])
        finally:
            self._in_flight -= 1
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
        await self._streams.await_pending()
        request = pb.PublishBatchRequest(topic=topic, messages=messages)
        reply = await self._calls.unary(self._stub.PublishBatch, request)
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
        return Subscription(self, request)

    async def close(self) -> None:
        """Closes every open subscription of this client (and its publish stream)."""
        await self._streams.close()
        await self._publish_stream.close()

    async def unsubscribe(self, subscription_id: str) -> None:
        """Ends a subscription by its id (its iterator then finishes normally).
        For your own `Subscription`s, `aclose()` does this and more."""
        await self._unsubscribe(subscription_id, self._calls.timeout)

    # -- internals ------------------------------------------------------------

    async def _unsubscribe(self, subscription_id: str, timeout: float | None) -> None:
        request = pb.UnsubscribeRequest(subscription_id=subscription_id)
        await self._calls.unary(self._stub.Unsubscribe, request, timeout=timeout)

    async def _ack(self, subscription_id: str, ids: list[str]) -> int:
        request = pb.AckRequest(subscription_id=subscription_id, message_ids=ids)
        reply = await self._calls.unary(self._stub.Ack, request)
        acknowledged: int = reply.acknowledged
        return acknowledged
