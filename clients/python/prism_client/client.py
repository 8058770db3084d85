"""PrismClient: one gRPC channel to a Prism server, scoped to a namespace."""

from __future__ import annotations

from types import TracebackType

import grpc

from ._pb.keyvalue_pb2_grpc import KeyValueStub
from ._pb.pubsub_pb2_grpc import PubSubStub
from ._pb.registry_pb2_grpc import RegistryStub
from ._rpc import NAMESPACE_METADATA, Calls
from .auth import DEFAULT_REFRESH_MARGIN, Credentials, TokenSource
from .keyvalue import KeyValue
from .pubsub import PubSub
from .registry import Registry

__all__ = ["NAMESPACE_METADATA", "PrismClient"]

# Large values (MiBs) must fit; the server enforces its own limits.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PrismClient:
    """An asyncio client. Use as `async with PrismClient(...) as client:` or
    call `await client.close()` when done.

    `timeout` (seconds) bounds every call; None waits as long as the server takes.
    Subscriptions (`client.pubsub.subscribe`) and inboxes (`client.registry.listen`)
    are long-lived and not bounded by it.

    `token` authenticates every call (metadata `authorization: Bearer <token>`):
    a `str` (a JWT, sent as it is), or a provider of the current token — a
    callable returning it (sync or async) or an object with
    `async def token(self) -> str` (`prism_client.auth.TokenProvider`, e.g.
    `OidcTokenProvider`). A provider is asked again before a call whenever the
    token the client holds is within `token_refresh_margin` seconds of its
    `exp` (capped at half the token's lifetime; a token whose `exp` cannot be
    read is asked for before every call). A subscription or inbox the server
    ends because its token expired is reopened with a fresh one.
    """

    def __init__(
        self,
        address: str = "localhost:8980",
        *,
        namespace: str = "default",
        token: TokenSource | None = None,
        timeout: float | None = 30.0,
        token_refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    ) -> None:
        self.address = address
        self.namespace = namespace
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        credentials = Credentials(token, token_refresh_margin) if token is not None else None
        self._calls = Calls(namespace, credentials, timeout)
        self._channel = grpc.aio.insecure_channel(address, options=options)
        stub = KeyValueStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.keyvalue = KeyValue(stub, self._calls)
        pubsub_stub = PubSubStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.pubsub = PubSub(pubsub_stub, self._calls)
        registry_stub = RegistryStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.registry = Registry(registry_stub, self._calls)

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
