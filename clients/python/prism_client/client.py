"""PrismClient: one gRPC channel to a Prism server, scoped to a namespace."""

from __future__ import annotations

from types import TracebackType

import grpc

from ._pb.keyvalue_pb2_grpc import KeyValueStub
from ._pb.pubsub_pb2_grpc import PubSubStub
from ._pb.registry_pb2_grpc import RegistryStub
from .keyvalue import KeyValue
from .pubsub import PubSub
from .registry import Registry

NAMESPACE_METADATA = "x-prism-namespace"

# Large values (MiBs) must fit; the server enforces its own limits.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PrismClient:
    """An asyncio client. Use as `async with PrismClient(...) as client:` or
    call `await client.close()` when done.

    `timeout` (seconds) bounds every call; None waits as long as the server takes.
    Subscriptions (`client.pubsub.subscribe`) and inboxes (`client.registry.listen`)
    are long-lived and not bounded by it.
    """

    def __init__(
        self,
        address: str = "localhost:8980",
        *,
        namespace: str = "default",
        token: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.aio.insecure_channel(address, options=options)
        metadata: list[tuple[str, str]] = [(NAMESPACE_METADATA, namespace)]
        if token is not None:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        stub = KeyValueStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.keyvalue = KeyValue(stub, self._metadata, timeout)
        pubsub_stub = PubSubStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.pubsub = PubSub(pubsub_stub, self._metadata, timeout)
        registry_stub = RegistryStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.registry = Registry(registry_stub, self._metadata, timeout)

    async def close(self) -> None:
        """Closes open subscriptions and inboxes and releases the channel; calls after this fail."""
        await self.pubsub.close()
        await self.registry.close()
        await self._channel.close()

    async def __aenter__(self) -> PrismClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
